"""Restarting a VM of a dead host here: the coordinator sends the definition it
kept (after the dead host was fenced); this agent checks it (restart_rules.py),
checks that its disks are reachable, defines it and starts it.

The same request again finds the VM running and says so, so a coordinator that
lost the reply (or a new leader) may ask again. A start the hypervisor refuses
because a disk is locked is `disk_locked`: a copy of the VM runs somewhere, and
no other host should try either.
"""

import asyncio

import structlog

from ferry.agent.hypervisor.base import Hypervisor, HypervisorUnavailable, StartRefused
from ferry.agent.hypervisor.disks import ImagesFolder
from ferry.agent.restart_rules import RestartRefused, disk_paths, restart_xml
from ferry.proto.agent import DiskInfo
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.ha import RestartReply, RestartRequest, RetireReply, RetireRequest


def lock_refusal(message: str) -> bool:
    """Whether the hypervisor's refusal is a disk held by another process: QEMU's image
    lock ("Failed to get "write" lock") or libvirt's lock manager (a lease "is locked")."""
    lowered = message.lower()
    return "lock" in lowered and ("failed to get" in lowered or "is locked" in lowered or "lockspace" in lowered)


class Restarts:
    def __init__(self, host: str, hypervisor: Hypervisor, images: ImagesFolder) -> None:
        self._host = host
        self._hypervisor = hypervisor
        self._images = images
        self._log = structlog.get_logger().bind(component="restarts")
        # One restart of a VM at a time here (a repeated request waits for the first).
        self._lock = asyncio.Lock()

    async def restart(self, request: RestartRequest) -> RestartReply:
        log = self._log.bind(restart_id=request.restart_id, vm=request.vm)
        try:
            xml = restart_xml(request.xml, request.vm, request.uuid, self._images)
        except RestartRefused as exc:
            log.warning("restart_refused", reason=str(exc))
            raise FerryError(ErrorCode.BAD_REQUEST, f"{self._host} does not start {request.vm}: {exc}") from None
        for path in disk_paths(xml):
            problem = await self._hypervisor.storage_problem(DiskInfo(target="", path=path))
            if problem is not None:
                raise FerryError(ErrorCode.START_REFUSED, f"{self._host} cannot start {request.vm}: {problem}")
        async with self._lock:
            try:
                started = await self._hypervisor.start_defined(xml, request.uuid)
            except StartRefused as exc:
                code = ErrorCode.DISK_LOCKED if lock_refusal(str(exc)) else ErrorCode.START_REFUSED
                log.error("restart_failed", code=str(code), reason=str(exc))
                raise FerryError(code, f"{self._host} could not start {request.vm}: {exc}") from None
            except HypervisorUnavailable as exc:
                raise FerryError(ErrorCode.UNAVAILABLE, str(exc)) from None
        log.warning("vm_restarted" if started else "vm_already_running")
        detail = "defined and started here" if started else "already running here"
        return RestartReply(vm=request.vm, host=self._host, running=True, detail=detail)

    async def retire(self, request: RetireRequest) -> RetireReply:
        """This host was fenced and is back: the VMs restarted elsewhere lose their definition here."""
        found: dict[str, list[str]] = {"retired": [], "running": [], "missing": []}
        async with self._lock:
            for vm in request.vms:
                try:
                    outcome = await self._hypervisor.retire_defined(vm.uuid)
                except HypervisorUnavailable as exc:
                    raise FerryError(ErrorCode.UNAVAILABLE, str(exc)) from None
                found[outcome].append(vm.vm)
        if found["running"]:
            # Two copies: the lock manager should have made this impossible.
            self._log.critical("vm_runs_twice", vms=found["running"])
        if found["retired"]:
            self._log.warning("vms_retired", vms=found["retired"])
        return RetireReply(host=self._host, **found)
