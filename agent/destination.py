"""The destination half of a session: prepare (check, reserve, pre-create disks),
commit (confirm the VM runs, drop the reservation) and rollback (remove what
prepare made). Every verb is idempotent per session id.

Reservations and the images made for them are journaled (agent/journal.py), each
image as soon as it exists: a restarted agent (`recover`) holds them again, and
a rollback removes what its own session made, nothing else.

Prepare creates disks only inside the agent's images folder, and refuses a
request whose disk paths are not plain absolute paths (agent/disk_paths.py)."""

import asyncio
import os
from collections.abc import Callable
from dataclasses import replace

import structlog

from ferry.agent.config import AgentConfig
from ferry.agent.disk_paths import copy_target_problem, path_problem, resolved_target_problem
from ferry.agent.hypervisor import DiskError, Hypervisor, HypervisorUnavailable, ImagesFolder
from ferry.agent.incoming import IncomingFacts, judge_incoming
from ferry.agent.journal import Journal, JournalEntry
from ferry.agent.progress import outcome_from_stats
from ferry.agent.reservations import Reservation, ReservationBook
from ferry.proto.agent import (
    CommitReply,
    Decline,
    DeclineCode,
    DiskInfo,
    JobReport,
    JobRole,
    Offer,
    PrepareReply,
    PrepareRequest,
    RollbackReply,
    SessionRef,
    VmDescription,
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
        journal: Journal,
        *,
        images: ImagesFolder | None = None,
    ) -> None:
        """`images`: the agent's images folder, the only place prepare creates
        disks; the daemon always gives it. Without it (unit tests whose fake
        hypervisor creates nothing) disks to copy are not confined."""
        self._config = config
        self._images = images
        self._hypervisor = hypervisor
        self._clock = clock
        self._journal = journal
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
        _refuse_unplain_paths(request, host)

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
                    # At once: an agent killed before the offer still knows what it made.
                    await self._journal.write(_entry(request.session_id, request.vm, None, created))
        except (DiskError, OSError) as exc:
            for path in created:
                await self._hypervisor.remove_disk(path)
            await self._forget(request.session_id, log)
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
        try:
            # Before the offer leaves: an offer this host could forget is a domain it
            # could not tell from another session's after a restart.
            await self._journal.write(_entry(request.session_id, request.vm, offer, created))
        except OSError as exc:
            for path in created:
                await self._hypervisor.remove_disk(path)
            await self._forget(request.session_id, log)
            raise FerryError(
                ErrorCode.UNAVAILABLE, f"{host} cannot journal a reservation for {request.vm.name}: {exc}"
            ) from None
        self._book.hold(_reservation(request.vm, offer, created, expires_at))
        log.info("prepare_offered", copy_disks=offer.copy_disks, lease_seconds=lease)
        return offer

    async def recover(self, entries: list[JournalEntry]) -> None:
        """Once at start, before any verb is served: the reservations of the agent's
        previous life, held again under a fresh lease (`expire_leases` keeps one
        while its incoming domain exists and rolls it back otherwise)."""
        expires_at = self._clock() + self._config.migration.lease_seconds
        for entry in entries:
            if entry.role != JobRole.DESTINATION:
                continue
            log = self._log.bind(session_id=entry.session_id, vm=entry.vm)
            if entry.offer is None or entry.description is None:
                # Prepare never finished, so no offer left this host and no migration
                # can be using these images: remove them now.
                await self._remove_unoffered(entry, log)
                continue
            self._book.hold(_reservation(entry.description, entry.offer, entry.created_disks, expires_at))
            log.info("reservation_recovered", created_disks=entry.created_disks)

    async def _remove_unoffered(self, entry: JournalEntry, log) -> None:
        removed = []
        try:
            for path in entry.created_disks:
                if await self._hypervisor.remove_disk(path):
                    removed.append(path)
        except (OSError, HypervisorUnavailable) as exc:
            # The entry stays: the next start tries again.
            log.warning("unoffered_images_kept", error=str(exc), created_disks=entry.created_disks)
            return
        await self._forget(entry.session_id, log)
        log.info("unoffered_images_removed", removed=removed)

    async def _storage_plan(self, request: PrepareRequest) -> tuple[list, list[str]]:
        """Disks to pre-create for copying, and sentences for disks this host cannot reach.
        Raises FerryError(bad_request) for a disk to copy that this host may not create."""
        to_copy, problems = [], []
        mode = request.options.storage
        for disk in request.vm.disks:
            if mode == StorageMode.COPY or (mode == StorageMode.AUTO and disk.local):
                refusal = await self._copy_target_problem(disk)
                if refusal is not None:
                    raise FerryError(
                        ErrorCode.BAD_REQUEST, f"{self._config.host} will not prepare {request.vm.name}'s disks: {refusal}"
                    )
                to_copy.append(disk)
                continue
            problem = await self._hypervisor.storage_problem(disk)
            if problem is None:
                continue
            if mode == StorageMode.AUTO:
                refusal = await self._copy_target_problem(disk)
                if refusal is None:
                    to_copy.append(disk)  # not reachable from here: copy it along
                    continue
                problem = f"{problem}, and {refusal}"
            problems.append(problem)
        return to_copy, problems

    async def _copy_target_problem(self, disk: DiskInfo) -> str | None:
        """Why this host may not create `disk` for copying; None when it may."""
        images = self._images
        if images is None:
            return None
        problem = copy_target_problem(disk.path, images)
        if problem is not None:
            return problem
        # Symlinks followed, as the agent (and qemu-img) would write there.
        resolved, folder = await asyncio.to_thread(
            lambda: (os.path.realpath(images.host_path(disk.path)), os.path.realpath(images.host_dir))
        )
        return resolved_target_problem(disk.path, resolved, folder)

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
        if self._book.release(request.session_id) is not None:
            await self._forget(request.session_id, log)
        try:
            outcome = outcome_from_stats(await self._hypervisor.completed_job_stats(request.vm))
        except Exception as exc:  # statistics are a nicety; the VM runs either way
            log.warning("completed_stats_unavailable", error=str(exc))
            outcome = None
        log.info("commit_confirmed", outcome=outcome)
        return CommitReply(session_id=request.session_id, host=self._config.host, vm_running=True, outcome=outcome)

    async def rollback(self, request: SessionRef) -> RollbackReply:
        """Removes what prepare made for this session, and only that: its images,
        and its incoming domain once no migration job runs into it. Never touches
        a VM that runs here."""
        log = self._log.bind(session_id=request.session_id, vm=request.vm)
        host = self._config.host
        held = self._book.get(request.session_id)
        vm = held.vm if held is not None else request.vm  # what the rollback would act on
        try:
            if await self._hypervisor.vm_state(vm) == VmState.RUNNING:
                raise FerryError(ErrorCode.CONFLICT, f"{vm} runs on {host}; rollback leaves it alone")
            if held is None:
                # Another session's domain or images may be here under the same VM name.
                log.info("rollback_unknown_session")
                return RollbackReply(
                    session_id=request.session_id, host=host,
                    message=f"{host} holds no reservation for session {request.session_id}; nothing was removed",
                )
            if await self._hypervisor.job_stats(held.vm) is not None:
                # Destroying the domain under a running job would fail the migration
                # from this end; the source ends it cleanly and then rolls back here.
                raise FerryError(
                    ErrorCode.CONFLICT, f"the migration of {held.vm} is still running; abort it at the source"
                )
            removed = []
            if await self._hypervisor.destroy_incoming(held.vm):
                removed.append(f"incoming domain {held.vm}")
            left = list(held.created_disks)
            try:
                for path in held.created_disks:
                    if await self._hypervisor.remove_disk(path):
                        removed.append(path)
                    left.remove(path)
            finally:
                if left:
                    # Held with what is left: the lease check tries again.
                    self._book.hold(replace(held, created_disks=tuple(left)))
                    await self._journal.write(_entry(held.session_id, held.description, held.offer, left))
        except HypervisorUnavailable as exc:
            raise FerryError(ErrorCode.UNAVAILABLE, f"{host} cannot reach its hypervisor: {exc}") from None
        self._book.release(held.session_id)
        await self._forget(held.session_id, log)
        log.info("rolled_back", removed=removed)
        return RollbackReply(session_id=request.session_id, host=host, removed=removed)

    async def reports(self, session_ids: list[str]) -> list[JobReport]:
        """The `jobs` verb's view of the reservations held here (all, or those named).
        Raises HypervisorUnavailable."""
        return [
            JobReport(
                session_id=held.session_id,
                vm=held.vm,
                role=JobRole.DESTINATION,
                job_running=await self._hypervisor.job_stats(held.vm) is not None,
                offer=held.offer,
                created_images=list(held.created_disks),
            )
            for held in self._book.all()
            if not session_ids or held.session_id in session_ids
        ]

    async def _forget(self, session_id: str, log) -> None:
        try:
            await self._journal.remove(session_id)
        except OSError as exc:
            # A restart would hold the reservation again until its lease lapses.
            log.warning("journal_remove_failed", error=str(exc))

    async def expire_leases(self) -> None:
        """Reservations whose migration never started lapse; running ones are renewed."""
        now = self._clock()
        for held in self._book.lapsed(now):
            if await self._hypervisor.vm_state(held.vm) is not None:
                # The incoming domain exists: the migration runs (or just finished).
                self._book.renew(held.session_id, now + self._config.migration.lease_seconds)
                continue
            self._log.warning("lease_lapsed", session_id=held.session_id, vm=held.vm)
            try:
                await self.rollback(SessionRef(session_id=held.session_id, vm=held.vm))
            except FerryError as exc:
                # Held still: the next check tries again.
                self._log.warning("lapsed_rollback_failed", session_id=held.session_id, vm=held.vm, reason=exc.message)


def _refuse_unplain_paths(request: PrepareRequest, host: str) -> None:
    """Every disk path of the request is a plain absolute path, or the request is refused."""
    for disk in request.vm.disks:
        problem = path_problem(disk.path)
        if problem is not None:
            raise FerryError(ErrorCode.BAD_REQUEST, f"{host} will not prepare {request.vm.name}: {problem}")


def _entry(session_id: str, vm: VmDescription, offer: Offer | None, created: list[str] | tuple[str, ...]) -> JournalEntry:
    return JournalEntry(
        session_id=session_id,
        vm=vm.name,
        role=JobRole.DESTINATION,
        description=vm,
        offer=offer,
        created_disks=list(created),
    )


def _reservation(vm: VmDescription, offer: Offer, created: list[str] | tuple[str, ...], expires_at: float) -> Reservation:
    return Reservation(
        session_id=offer.session_id,
        vm=vm.name,
        description=vm,
        memory_mib=vm.memory_mib,
        vcpus=vm.vcpus,
        expires_at=expires_at,
        offer=offer,
        created_disks=tuple(created),
    )
