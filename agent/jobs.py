"""The `jobs` verb: what this host knows of sessions (its journal, libvirt's jobs
now) and where the VMs asked about are. A coordinator that lost track of a
session (it restarted, an agent restarted) asks here before it acts again."""

from typing import Protocol

from ferry.agent.hypervisor import Hypervisor, HypervisorUnavailable
from ferry.proto.agent import JobReport, JobsReply, JobsRequest, VmPlace
from ferry.proto.errors import ErrorCode, FerryError


class Reporter(Protocol):
    async def reports(self, session_ids: list[str]) -> list[JobReport]: ...


class Jobs:
    def __init__(self, host: str, hypervisor: Hypervisor, reporters: list[Reporter]) -> None:
        self._host = host
        self._hypervisor = hypervisor
        self._reporters = reporters

    async def answer(self, request: JobsRequest) -> JobsReply:
        try:
            jobs = [report for part in self._reporters for report in await part.reports(request.session_ids)]
            vms = [VmPlace(vm=vm, state=await self._hypervisor.vm_state(vm)) for vm in request.vms]
        except HypervisorUnavailable as exc:
            # Half an answer would read as "no job runs": none at all.
            raise FerryError(ErrorCode.UNAVAILABLE, f"{self._host} cannot reach its hypervisor: {exc}") from None
        return JobsReply(host=self._host, jobs=jobs, vms=vms)
