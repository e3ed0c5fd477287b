"""The destination half of a session: prepare (check, reserve, pre-create disks),
commit (confirm the VM runs, drop the reservation) and rollback (remove what
prepare made). Every verb is idempotent per session id."""

from collections.abc import Callable

import structlog

from ferry.agent.config import AgentConfig
from ferry.agent.hypervisor import DiskError, Hypervisor, HypervisorUnavailable
from ferry.agent.incoming import IncomingFacts, judge_incoming
from ferry.agent.progress import outcome_from_stats
from ferry.agent.reservations import Reservation, ReservationBook
from ferry.proto.agent import (
    CommitReply,
    Decline,
    DeclineCode,
    Offer,
    PrepareReply,
    PrepareRequest,
    RollbackReply,
    SessionRef,
)
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import VmState
from ferry.proto.network import missing_attachments
from ferry.proto.session import StorageMode


class Destination:
    def __init__(
        self,
        config: AgentConfig,
        hypervisor: Hypervisor,
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._hypervisor = hypervisor
        self._clock = clock
        self._book = ReservationBook()
        self._log = structlog.get_logger().bind(host=config.host, role="destination")

    @property
    def reservations(self) -> ReservationBook:
        return self._book

    async def prepare(self, request: PrepareRequest) -> PrepareReply:
        log = self._log.bind(session_id=request.session_id, vm=request.vm.name)
        held = self._book.get(request.session_id)
        if held is not None:
            # The same request again: the same answer, and the lease renewed (the
            # coordinator repeats prepare to keep the reservation while the job runs).
            self._book.renew(request.session_id, self._clock() + request.lease_seconds)
            return held.offer
        host = self._config.host

        def decline(code: str, reason: str) -> Decline:
            log.info("prepare_declined", code=str(code), reason=reason)
            return Decline(session_id=request.session_id, host=host, code=str(code), reason=reason)

        if self._book.for_vm(request.vm.name) is not None:
            return decline(DeclineCode.VM_EXISTS, f"{host} is already preparing to receive {request.vm.name}")
        try:
            node = await self._hypervisor.node_facts()
            existing = await self._hypervisor.vm_state(request.vm.name)
            cpu_problem = await self._hypervisor.cpu_incompatibility(request.vm)
            network_problems = missing_attachments(request.vm.attachments, await self._hypervisor.network_facts())
            to_copy, storage_problems = await self._storage_plan(request)
        except HypervisorUnavailable as exc:
            return decline(DeclineCode.HYPERVISOR_UNAVAILABLE, f"{host} cannot reach its hypervisor: {exc}")
        refusal = judge_incoming(
            request.vm,
            request.source,
            request.source_versions,
            IncomingFacts(
                host=host,
                node=node,
                reserved_memory_mib=self._book.memory_mib,
                existing_state=existing,
                cpu_problem=cpu_problem,
                storage_problems=storage_problems,
                memory_margin_mib=self._config.migration.memory_margin_mib,
                network_problems=network_problems,
            ),
        )
        if refusal is not None:
            return decline(refusal.code, refusal.reason)
        created: list[str] = []
        try:
            for disk in to_copy:
                if await self._hypervisor.create_disk(disk):
                    created.append(disk.path)
        except DiskError as exc:
            for path in created:
                await self._hypervisor.remove_disk(path)
            return decline(DeclineCode.STORAGE_UNREACHABLE, f"{host} could not prepare {request.vm.name}'s disks: {exc}")
        lease = min(request.lease_seconds, self._config.migration.lease_seconds * 10)
        expires_at = self._clock() + lease
        offer = Offer(
            session_id=request.session_id,
            host=host,
            peer_uri=self._config.hypervisor.peer_uri,
            migration_address=self._config.hypervisor.migration_address,
            copy_disks=[d.target for d in to_copy],
            lease_expires_at=expires_at,
        )
        self._book.hold(
            Reservation(
                session_id=request.session_id,
                vm=request.vm.name,
                description=request.vm,
                memory_mib=request.vm.memory_mib,
                vcpus=request.vm.vcpus,
                expires_at=expires_at,
                offer=offer,
                created_disks=tuple(created),
            )
        )
        log.info("prepare_offered", copy_disks=offer.copy_disks, lease_seconds=lease)
        return offer

    async def _storage_plan(self, request: PrepareRequest) -> tuple[list, list[str]]:
        """Disks to pre-create for copying, and sentences for disks this host cannot reach."""
        to_copy, problems = [], []
        mode = request.options.storage
        for disk in request.vm.disks:
            if mode == StorageMode.COPY or (mode == StorageMode.AUTO and disk.local):
                to_copy.append(disk)
                continue
            problem = await self._hypervisor.storage_problem(disk)
            if problem is not None:
                if mode == StorageMode.AUTO:
                    to_copy.append(disk)  # not reachable from here: copy it along
                else:
                    problems.append(problem)
        return to_copy, problems

    async def commit(self, request: SessionRef) -> CommitReply:
        """Confirms the VM runs here; only then is the reservation dropped."""
        log = self._log.bind(session_id=request.session_id, vm=request.vm)
        held = self._book.get(request.session_id)
        if held is not None:
            await self._hypervisor.adopt_incoming(held.description)
        state = await self._hypervisor.vm_state(request.vm)
        if state != VmState.RUNNING:
            log.warning("commit_not_running", state=str(state))
            return CommitReply(session_id=request.session_id, host=self._config.host, vm_running=False)
        self._book.release(request.session_id)
        try:
            outcome = outcome_from_stats(await self._hypervisor.completed_job_stats(request.vm))
        except Exception as exc:  # statistics are a nicety; the VM runs either way
            log.warning("completed_stats_unavailable", error=str(exc))
            outcome = None
        log.info("commit_confirmed", outcome=outcome)
        return CommitReply(session_id=request.session_id, host=self._config.host, vm_running=True, outcome=outcome)

    async def rollback(self, request: SessionRef) -> RollbackReply:
        """Removes what prepare made. Never touches a VM that runs here."""
        log = self._log.bind(session_id=request.session_id, vm=request.vm)
        state = await self._hypervisor.vm_state(request.vm)
        if state == VmState.RUNNING:
            raise FerryError(
                ErrorCode.CONFLICT,
                f"{request.vm} runs on {self._config.host}; rollback leaves it alone",
            )
        removed = []
        if await self._hypervisor.destroy_incoming(request.vm):
            removed.append(f"incoming domain {request.vm}")
        held = self._book.release(request.session_id)
        if held is not None:
            for path in held.created_disks:
                if await self._hypervisor.remove_disk(path):
                    removed.append(path)
        log.info("rolled_back", removed=removed)
        return RollbackReply(session_id=request.session_id, host=self._config.host, removed=removed)

    async def expire_leases(self) -> None:
        """Reservations whose migration never started lapse; running ones are renewed."""
        now = self._clock()
        for held in self._book.lapsed(now):
            if await self._hypervisor.vm_state(held.vm) is not None:
                # The incoming domain exists: the migration runs (or just finished).
                self._book.renew(held.session_id, now + self._config.migration.lease_seconds)
                continue
            self._log.warning("lease_lapsed", session_id=held.session_id, vm=held.vm)
            await self.rollback(SessionRef(session_id=held.session_id, vm=held.vm))
