"""The source half of a session: describe the VM, run the migration with a
monitor that publishes progress and applies the convergence policy
(agent/steering.py decides, this module acts), obey abort and bandwidth
changes, and clean up copied local images once the destination confirmed the
VM runs there.

Every job is journaled (agent/journal.py) before libvirt is asked to start it,
and its result when it ends. A restarted agent (`recover`) follows a job
libvirt kept running without it, or judges one that ended unwatched from where
the VM is; a repeated `migrate` gets the journaled state, never a second job."""

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import structlog

from ferry.agent.config import AgentConfig
from ferry.agent.hypervisor import (
    Hypervisor,
    HypervisorUnavailable,
    LeverRefused,
    MeasurementFailed,
    MigrationFailed,
    MigrationPlan,
    VmNotFound,
)
from ferry.agent.journal import Journal, JournalEntry
from ferry.agent.peer_rules import migrate_refusal
from ferry.agent.progress import outcome_from_stats, progress_from_stats
from ferry.agent.steering import Steering
from ferry.proto import subjects
from ferry.proto.agent import (
    AbortReply,
    BandwidthRequest,
    CommitReply,
    DescribeRequest,
    DirtyRate,
    DowntimeRequest,
    ForceCompleteRequest,
    JobReport,
    JobRole,
    MeasureRequest,
    MigrateRequest,
    MigrationState,
    SessionProgress,
    SessionRef,
    SessionResult,
    SessionSteered,
    SteerReply,
    VmDescription,
)
from ferry.proto.api import RefusalCode
from ferry.proto.codec import encode
from ferry.proto.convergence import POLICIES, ActionKind, PolicyAction
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import VmState
from ferry.proto.session import Encryption, Progress, SessionCode

# Finished jobs are remembered this long, so a repeated migrate request (a
# coordinator that restarted, a lost reply) gets the result instead of a new job.
KEEP_FINISHED_SECONDS = 3600.0

# A commit that finds its job still being concluded waits this long for it.
COMMIT_SETTLE_SECONDS = 5.0

Publish = Callable[[str, bytes], Awaitable[None]]


@dataclass
class SourceJob:
    request: MigrateRequest
    started: float  # monotonic
    bandwidth_mib: int
    # Domain paths of the local disks copied to the destination: removed here after commit.
    copied_paths: list[str]
    started_at: float = 0.0  # wall time, as journaled
    steering: Steering | None = None
    abort_requested: bool = False
    # Set when the convergence policy (not a person) aborted the job.
    policy_abort: str = ""
    actions: list[PolicyAction] = field(default_factory=list)
    last_progress: Progress | None = None
    result: SessionResult | None = None
    finished: float = 0.0
    # What the job asked libvirt for (VIR_MIGRATE_TLS or not); "" until it was asked.
    encryption: str = ""
    task: asyncio.Task | None = field(default=None, repr=False)

    def journal_entry(self) -> JournalEntry:
        return JournalEntry(
            session_id=self.request.session_id,
            vm=self.request.vm,
            role=JobRole.SOURCE,
            request=self.request,
            copied_paths=list(self.copied_paths),
            started_at=self.started_at,
            abort_requested=self.abort_requested,
            result=self.result,
        )

    def state(self) -> MigrationState:
        return MigrationState(
            session_id=self.request.session_id,
            running=self.result is None,
            result=self.result,
            bandwidth_mib=self.bandwidth_mib,
        )


class Source:
    def __init__(
        self,
        config: AgentConfig,
        hypervisor: Hypervisor,
        publish: Publish,
        journal: Journal,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._hypervisor = hypervisor
        self._publish = publish
        self._journal = journal
        self._clock = clock
        self._monotonic = monotonic
        self._jobs: dict[str, SourceJob] = {}
        # vm -> (bytes/s, wall time measured): lets a session predict convergence
        # without waiting a second for a fresh measurement.
        self._dirty_rates: dict[str, tuple[int, float]] = {}
        self._log = structlog.get_logger().bind(host=config.host, role="source")

    @property
    def in_flight(self) -> int:
        return sum(1 for job in self._jobs.values() if job.result is None)

    def running(self) -> list[SourceJob]:
        """The jobs not ended yet, each with its last progress sample (for /metrics)."""
        return [job for job in self._jobs.values() if job.result is None]

    async def describe(self, request: DescribeRequest) -> VmDescription:
        try:
            vm = await self._hypervisor.describe_vm(request.vm, definition=request.definition)
        except VmNotFound:
            raise FerryError(ErrorCode.UNKNOWN_VM, f"{self._config.host} has no VM named {request.vm}") from None
        except HypervisorUnavailable as exc:
            raise FerryError(ErrorCode.UNAVAILABLE, str(exc)) from None
        rate = self._dirty_rates.get(request.vm)
        if rate is not None:
            vm = msgspec.structs.replace(vm, dirty_rate_bps=rate[0], dirty_rate_at=rate[1])
        return vm

    async def measure(self, request: MeasureRequest) -> DirtyRate:
        """The guest's dirty rate now, measured by the hypervisor over `seconds`."""
        if any(j.result is None and j.request.vm == request.vm for j in self._jobs.values()):
            raise FerryError(ErrorCode.CONFLICT, f"{request.vm} is migrating; its dirty rate cannot be measured now")
        try:
            bps = await self._hypervisor.measure_dirty_rate(request.vm, request.seconds)
        except VmNotFound:
            raise FerryError(ErrorCode.UNKNOWN_VM, f"{self._config.host} has no VM named {request.vm}") from None
        except (HypervisorUnavailable, MeasurementFailed) as exc:
            raise FerryError(ErrorCode.UNAVAILABLE, f"cannot measure {request.vm}'s dirty rate: {exc}") from None
        at = self._clock()
        self._dirty_rates[request.vm] = (bps, at)
        return DirtyRate(vm=request.vm, host=self._config.host, bps=bps, seconds=request.seconds, at=at)

    async def refresh_dirty_rates(self, running: list[str]) -> None:
        """Measure each running guest in turn (the background loop), forgetting gone ones."""
        for vm in list(self._dirty_rates):
            if vm not in running:
                del self._dirty_rates[vm]
        seconds = self._config.migration.dirty_rate_seconds
        for vm in running:
            try:
                await self.measure(MeasureRequest(vm=vm, seconds=seconds))
            except FerryError as exc:
                self._log.debug("dirty_rate_not_measured", vm=vm, reason=exc.message)

    async def migrate(self, request: MigrateRequest) -> MigrationState:
        job = self._jobs.get(request.session_id)
        if job is not None:
            return job.state()  # the same request again: where that job stands
        # Judged before anything is looked at: the request came over the bus, and
        # what it may make libvirt do (an unencrypted stream, a peer to dial) is
        # this host's decision, not the sender's.
        refusal = migrate_refusal(
            request,
            require_tls=self._config.migration.require_tls,
            allowed_schemes=self._config.migration.allowed_peer_schemes,
        )
        if refusal is not None:
            self._log.warning(
                "migrate_refused", session_id=request.session_id, vm=request.vm, code=refusal.code,
                reason=refusal.message,
            )
            raise refusal
        await self._forget_old_jobs()
        busy = next((j for j in self._jobs.values() if j.result is None and j.request.vm == request.vm), None)
        if busy is not None:
            raise FerryError(
                ErrorCode.CONFLICT, f"{request.vm} is already migrating in session {busy.request.session_id}"
            )
        steering = _steering(request)
        vm = await self.describe(DescribeRequest(vm=request.vm))
        if not vm.running:
            raise FerryError(ErrorCode.CONFLICT, f"{request.vm} is not running on {self._config.host}")
        try:
            foreign = await self._hypervisor.job_stats(request.vm)
        except HypervisorUnavailable as exc:
            raise FerryError(ErrorCode.UNAVAILABLE, str(exc)) from None
        if foreign is not None:
            # A job no session here knows of: one started by an agent whose journal
            # is gone, or by hand (virsh). Never a second migration of the same VM.
            raise FerryError(
                ErrorCode.CONFLICT,
                f"libvirt on {self._config.host} already runs a job on {request.vm} that no session of this agent "
                "started; it is not migrated twice",
            )
        copied = [d.path for d in vm.disks if d.target in request.copy_disks]
        job = SourceJob(
            request=request,
            started=self._monotonic(),
            started_at=self._clock(),
            bandwidth_mib=request.options.bandwidth_mib,
            copied_paths=copied,
            steering=steering,
        )
        # Held before the journal write: a request for the same session meanwhile
        # sees this job, not a free slot.
        self._jobs[request.session_id] = job
        try:
            await self._journal.write(job.journal_entry())
        except OSError as exc:
            # A job the agent could forget is a job a restarted agent might start twice.
            del self._jobs[request.session_id]
            raise FerryError(
                ErrorCode.UNAVAILABLE,
                f"{self._config.host} cannot journal the migration of {request.vm} ({exc}); it was not started",
            ) from None
        job.task = asyncio.create_task(self._run(job), name=f"migrate-{request.session_id}")
        return job.state()

    async def recover(self, entries: list[JournalEntry]) -> None:
        """Once at start, before any verb is served: the jobs of the agent's previous life.

        A finished one is remembered as it ended. One without a result is followed
        while libvirt still runs it, then judged from where the VM is."""
        now, mono = self._clock(), self._monotonic()
        entries = await self._journal.prune(entries, now=now, keep_seconds=KEEP_FINISHED_SECONDS)
        for entry in entries:
            if entry.role != JobRole.SOURCE or entry.request is None:
                continue
            request = entry.request
            log = self._log.bind(session_id=request.session_id, vm=request.vm)
            job = SourceJob(
                request=request,
                started=mono - max(0.0, now - entry.started_at),
                started_at=entry.started_at,
                bandwidth_mib=request.options.bandwidth_mib,
                copied_paths=list(entry.copied_paths),
                abort_requested=entry.abort_requested,
                result=entry.result,
                # The previous agent passed libvirt exactly the journaled request's flag.
                encryption=_encryption(request.options.tls),
            )
            self._jobs[request.session_id] = job
            if entry.result is not None:
                job.finished = mono - max(0.0, now - entry.result.at)
                job.last_progress = entry.result.last_progress
                log.info("migration_remembered", ok=entry.result.ok, code=entry.result.code)
                continue
            try:
                # A fresh Steering: what the old one saw is gone. Its stall window and
                # downtime ramp count from the agent's restart; the completion timeout and
                # the pause use libvirt's elapsed time, which counts from the job's start.
                job.steering = _steering(request)
            except FerryError as exc:
                log.warning("migration_not_steered", reason=exc.message)  # a policy this version lacks
            try:
                running = await self._hypervisor.job_stats(request.vm) is not None
                state = None if running else await self._hypervisor.vm_state(request.vm)
            except Exception as exc:
                # Cannot tell yet (libvirtd away, a call that failed): follow it until libvirt answers.
                log.warning("job_unknown", error=str(exc) or type(exc).__name__)
                running, state = True, None
            if running:
                log.warning("migration_followed", reason="the previous agent started it and libvirt still runs it")
                job.task = asyncio.create_task(self._follow(job), name=f"follow-{request.session_id}")
            else:
                await self._judge(job, state, log)

    async def _run(self, job: SourceJob) -> None:
        request = job.request
        log = self._log.bind(session_id=request.session_id, vm=request.vm, dest=request.dest)
        assert job.steering is not None
        policy = job.steering.policy
        plan = MigrationPlan(
            peer_uri=request.peer_uri,
            migration_address=request.migration_address,
            tls=request.options.tls,
            bandwidth_mib=request.options.bandwidth_mib,
            max_downtime_ms=job.steering.first_downtime_ms(),
            copy_disks=list(request.copy_disks),
            unsafe=self._config.migration.allow_unsafe,
            auto_converge=policy.auto_converge,
            auto_converge_initial=policy.auto_converge_initial,
            auto_converge_increment=policy.auto_converge_increment,
            # Armed whenever the session allows post-copy: the policy's trigger or an
            # operator's force-complete may switch later, and QEMU cannot arm it then.
            postcopy=job.steering.postcopy_armed,
        )
        log.info(
            "migration_started", tls=plan.tls, bandwidth_mib=plan.bandwidth_mib, copy_disks=plan.copy_disks,
            policy=policy.name, max_downtime_ms=plan.max_downtime_ms, auto_converge=plan.auto_converge,
            postcopy=plan.postcopy,
        )
        monitor = asyncio.create_task(self._monitor(job))
        ok, code, reason = False, "", ""
        try:
            if job.abort_requested:
                raise MigrationFailed("aborted before the migration started")
            job.encryption = _encryption(plan.tls)
            await self._hypervisor.migrate(request.vm, plan)
            ok = True
        except MigrationFailed as exc:
            code, reason = str(SessionCode.MIGRATION_FAILED), str(exc)
        except Exception as exc:  # the session must end with a result whatever happened
            log.exception("migration_crashed")
            code, reason = str(SessionCode.INTERNAL), f"the agent on {self._config.host} failed: {exc}"
        finally:
            monitor.cancel()
        await self._finish(job, ok, code, reason, log)

    async def _follow(self, job: SourceJob) -> None:
        """A job the previous agent started: monitored and steered as `_run` does,
        until libvirt no longer runs it; then judged from where the VM is."""
        log = self._log.bind(session_id=job.request.session_id, vm=job.request.vm, dest=job.request.dest)
        monitor = asyncio.create_task(self._monitor(job))
        try:
            while await self._job_runs(job.request.vm, log):
                await asyncio.sleep(self._config.migration.progress_interval)
        finally:
            monitor.cancel()
        await self._conclude_unwatched(job, log)

    async def _job_runs(self, vm: str, log) -> bool:
        try:
            return await self._hypervisor.job_stats(vm) is not None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # libvirtd away (restarting?) or a call that failed: the job may still
            # run; ask again next time. The follower must never die without a result.
            log.warning("job_unknown", error=str(exc) or type(exc).__name__)
            return True

    async def _conclude_unwatched(self, job: SourceJob, log) -> None:
        while True:
            try:
                state = await self._hypervisor.vm_state(job.request.vm)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("vm_state_unknown", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(self._config.migration.progress_interval)
        await self._judge(job, state, log)

    async def _judge(self, job: SourceJob, state: VmState | None, log) -> None:
        """The job ended (or never started) while no agent watched: libvirt undefines
        the source domain on success (UNDEFINE_SOURCE), so a VM still active here
        means it did not move."""
        request, host = job.request, self._config.host
        if state is None or state == VmState.SHUTOFF:
            await self._finish(job, True, "", "", log)
            return
        active = state in (VmState.RUNNING, VmState.PAUSED)
        where = f"{request.vm} still runs on {host} ({state})" if active else f"{request.vm} is still on {host} ({state})"
        code, reason = str(SessionCode.MIGRATION_FAILED), (
            f"the migration ended while the agent on {host} was not watching (it restarted), and {where}"
        )
        await self._finish(job, False, code, reason, log)

    async def _finish(self, job: SourceJob, ok: bool, code: str, reason: str, log) -> None:
        """The result: kept, journaled, published (results are published once;
        a coordinator that missed it asks `migrate` again and gets it there)."""
        request = job.request
        elapsed_ms = int((self._monotonic() - job.started) * 1000)
        aborted = not ok and job.abort_requested
        if aborted:
            code, reason = str(SessionCode.CANCELLED), f"aborted on request; {request.vm} keeps running on {self._config.host}"
        elif not ok and job.policy_abort and job.steering is not None:
            code = str(SessionCode.NOT_CONVERGING)
            reason = (
                f"the {job.steering.policy.name} policy aborted it: {job.policy_abort}; "
                f"{request.vm} keeps running on {self._config.host}"
            )
        job.result = SessionResult(
            session_id=request.session_id,
            vm=request.vm,
            host=self._config.host,
            at=self._clock(),
            ok=ok,
            aborted=aborted,
            code=code,
            reason=reason,
            outcome=outcome_from_stats({}, measured_total_ms=elapsed_ms) if ok else None,
            last_progress=job.last_progress,
            actions=list(job.actions),
            encryption=job.encryption,
        )
        job.finished = self._monotonic()
        (log.info if ok else log.warning)("migration_finished", ok=ok, aborted=aborted, code=code, reason=reason, elapsed_ms=elapsed_ms)
        await self._record(job, log)
        await self._publish(subjects.host_session(self._config.host, request.session_id), encode(job.result))

    async def _record(self, job: SourceJob, log) -> None:
        try:
            await self._journal.write(job.journal_entry())
        except OSError as exc:
            # The job itself is not hurt; a restart would judge it again from libvirt.
            log.error("journal_write_failed", error=str(exc))

    async def _monitor(self, job: SourceJob) -> None:
        """Samples the job about twice a second; re-sends an abort that came too early."""
        subject = subjects.host_session(self._config.host, job.request.session_id)
        while True:
            await asyncio.sleep(self._config.migration.progress_interval)
            try:
                stats = await self._hypervisor.job_stats(job.request.vm)
                if stats is None or not stats.get("data_total"):
                    continue  # no job yet, or one still setting up (nothing to show)
                if job.abort_requested:
                    await self._hypervisor.abort_job(job.request.vm)
                job.last_progress = progress_from_stats(stats)
                await self._publish(
                    subject,
                    encode(
                        SessionProgress(
                            session_id=job.request.session_id,
                            vm=job.request.vm,
                            host=self._config.host,
                            at=self._clock(),
                            progress=job.last_progress,
                        )
                    ),
                )
                if job.steering is not None and not job.abort_requested:
                    throttle = int(stats.get("auto_converge_throttle", 0) or 0)
                    for action in job.steering.observe(job.last_progress, self._clock(), throttle_percent=throttle):
                        await self._steer(job, action, subject)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A missed sample is not a failed migration.
                self._log.warning("progress_sample_failed", session_id=job.request.session_id, error=str(exc))

    async def _steer(self, job: SourceJob, action: PolicyAction, subject: str) -> None:
        """Carry out one policy action, then record and publish it."""
        vm = job.request.vm
        if action.kind in (ActionKind.SET_DOWNTIME, ActionKind.PAUSE):
            await self._hypervisor.set_max_downtime(vm, action.value)
        elif action.kind == ActionKind.POSTCOPY:
            await self._hypervisor.start_postcopy(vm)
        elif action.kind == ActionKind.ABORT:
            job.policy_abort = action.reason
            await self._hypervisor.abort_job(vm)
        job.actions.append(action)
        self._log.info(
            "policy_action", session_id=job.request.session_id, vm=vm, action=str(action.kind),
            value=action.value, reason=action.reason,
        )
        await self._publish(
            subject,
            encode(SessionSteered(session_id=job.request.session_id, vm=vm, host=self._config.host, action=action)),
        )

    async def abort(self, request: SessionRef) -> AbortReply:
        job = self._jobs.get(request.session_id)
        if job is None:
            return AbortReply(session_id=request.session_id, aborted=False, message="no such migration here")
        if job.result is not None:
            return AbortReply(
                session_id=request.session_id, aborted=False, message=f"the migration already ended (ok={job.result.ok})"
            )
        job.abort_requested = True
        log = self._log.bind(session_id=request.session_id, vm=job.request.vm)
        # Journaled first: a job that ends while the agent is down is then judged cancelled.
        await self._record(job, log)
        await self._hypervisor.abort_job(job.request.vm)
        log.info("abort_requested")
        return AbortReply(session_id=request.session_id, aborted=True, message="abort sent to the hypervisor")

    async def set_bandwidth(self, request: BandwidthRequest) -> MigrationState:
        job = self._jobs.get(request.session_id)
        if job is None:
            raise FerryError(ErrorCode.NOT_FOUND, f"{self._config.host} runs no migration for session {request.session_id}")
        if job.result is None:
            await self._hypervisor.set_bandwidth(job.request.vm, request.bandwidth_mib)
            job.bandwidth_mib = request.bandwidth_mib
            self._log.info("bandwidth_changed", session_id=request.session_id, bandwidth_mib=request.bandwidth_mib)
        return job.state()

    async def force_complete(self, request: ForceCompleteRequest) -> SteerReply:
        """Finish the running migration now (agent/steering.py decides: post-copy or pause)."""
        job, steering, sample = self._steerable(request.session_id)
        return await self._operator_action(
            job, steering, lambda s: s.force_complete(sample, self._clock(), by=request.requested_by)
        )

    async def set_downtime(self, request: DowntimeRequest) -> SteerReply:
        job, steering, _sample = self._steerable(request.session_id)
        return await self._operator_action(
            job, steering,
            lambda s: s.set_max_downtime(
                request.max_downtime_ms, self._clock(), by=request.requested_by, sample=job.last_progress
            ),
        )

    def _steerable(self, session_id: str) -> tuple[SourceJob, Steering, Progress]:
        """The running job an operator's lever applies to, or a FerryError saying why not."""
        job = self._jobs.get(session_id)
        if job is None:
            raise FerryError(ErrorCode.NOT_FOUND, f"{self._config.host} runs no migration for session {session_id}")
        vm = job.request.vm
        if job.result is not None:
            raise FerryError(RefusalCode.NOT_RUNNING, f"the migration of {vm} has already ended (ok={job.result.ok})")
        if job.abort_requested:
            raise FerryError(RefusalCode.NOT_RUNNING, f"the migration of {vm} is being aborted")
        if job.steering is None:
            raise FerryError(ErrorCode.CONFLICT, f"the migration of {vm} is followed but not steered (unknown policy)")
        if job.steering.finished:
            what = "is in post-copy" if any(a.kind == ActionKind.POSTCOPY for a in job.actions) else "is being aborted"
            raise FerryError(RefusalCode.NOT_RUNNING, f"the migration of {vm} {what}: nothing more can be steered")
        if job.last_progress is None:
            raise FerryError(
                RefusalCode.NOT_RUNNING, f"the migration of {vm} has not begun copying yet; try again in a moment"
            )
        return job, job.steering, job.last_progress

    async def _operator_action(
        self, job: SourceJob, steering: Steering, decide: Callable[[Steering], PolicyAction | None]
    ) -> SteerReply:
        sid, vm = job.request.session_id, job.request.vm
        # If libvirt refuses, the policy goes on as if nothing had been asked.
        before = copy.copy(steering)
        action = decide(steering)
        if action is None:
            raise FerryError(RefusalCode.NOT_RUNNING, f"the migration of {vm} is no longer steered")
        try:
            await self._steer(job, action, subjects.host_session(self._config.host, sid))
        except (LeverRefused, VmNotFound, HypervisorUnavailable) as exc:
            if job.steering is steering:
                job.steering = before
            if isinstance(exc, HypervisorUnavailable):
                raise FerryError(ErrorCode.UNAVAILABLE, str(exc)) from None
            raise FerryError(
                ErrorCode.CONFLICT, f"libvirt on {self._config.host} refused {action.kind} for {vm}: {exc}"
            ) from None
        return SteerReply(session_id=sid, action=action)

    async def commit(self, request: SessionRef) -> CommitReply:
        """After the destination confirmed: remove the local images copied away."""
        state = await self._hypervisor.vm_state(request.vm)
        if state in (VmState.RUNNING, VmState.PAUSED):
            raise FerryError(
                ErrorCode.CONFLICT,
                f"{request.vm} is still active on {self._config.host}; its images stay",
            )
        job = self._jobs.get(request.session_id)
        removed = []
        log = self._log.bind(session_id=request.session_id, vm=request.vm)
        if job is not None and job.result is None and job.task is not None:
            # The VM has left, but the job (often one followed after a restart) is
            # still being concluded: wait for it, or the images copied away would
            # stay behind with nobody asking to remove them again.
            try:
                await asyncio.wait_for(asyncio.shield(job.task), timeout=COMMIT_SETTLE_SECONDS)
            except TimeoutError:
                raise FerryError(
                    ErrorCode.UNAVAILABLE,
                    f"{self._config.host} is still concluding the migration of {request.vm}; ask again",
                ) from None
        if job is not None and job.result is not None and job.result.ok:
            for path in job.copied_paths:
                if await self._hypervisor.remove_disk(path):
                    removed.append(path)
            job.copied_paths = []
            # libvirt undefines the source domain itself (UNDEFINE_SOURCE), but not
            # always when the agent that started the job died before it ended; a
            # shut-off copy left here could be started by mistake: a VM run twice.
            if state == VmState.SHUTOFF and await self._hypervisor.remove_inactive(request.vm):
                log.info("source_definition_removed")
                removed.append(f"domain {request.vm}")
        if job is not None and job.result is not None:
            # The session is over on this host; the job stays in memory for repeats.
            await self._forget_entry(request.session_id, log)
        log.info("source_cleaned_up", removed=removed)
        return CommitReply(session_id=request.session_id, host=self._config.host, vm_running=False, removed=removed)

    async def reports(self, session_ids: list[str]) -> list[JobReport]:
        """The `jobs` verb's view of this host's outgoing sessions (all, or those named).
        Raises HypervisorUnavailable."""
        found = []
        for sid, job in list(self._jobs.items()):
            if session_ids and sid not in session_ids:
                continue
            found.append(
                JobReport(
                    session_id=sid,
                    vm=job.request.vm,
                    role=JobRole.SOURCE,
                    job_running=await self._hypervisor.job_stats(job.request.vm) is not None,
                    result=job.result,
                    started=True,  # a job exists only once its request was journaled
                    last_progress=job.last_progress,
                )
            )
        return found

    async def _forget_old_jobs(self) -> None:
        now = self._monotonic()
        for sid, job in list(self._jobs.items()):
            if job.result is not None and now - job.finished > KEEP_FINISHED_SECONDS:
                del self._jobs[sid]
                await self._forget_entry(sid, self._log.bind(session_id=sid, vm=job.request.vm))

    async def _forget_entry(self, session_id: str, log) -> None:
        try:
            await self._journal.remove(session_id)
        except OSError as exc:
            # Harmless: a restart remembers the finished job until it is pruned.
            log.warning("journal_remove_failed", error=str(exc))

    async def close(self) -> None:
        """On shutdown running migrations are left to the hypervisor, which finishes them
        (their journal entries stay: a restarted agent follows those jobs)."""
        for job in self._jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()


def _encryption(tls: bool) -> str:
    return str(Encryption.TLS if tls else Encryption.NONE)


def _steering(request: MigrateRequest) -> Steering:
    """Raises FerryError(bad_request) for a policy this agent does not know."""
    policy = POLICIES.get(request.options.policy)
    if policy is None:
        raise FerryError(
            ErrorCode.BAD_REQUEST,
            f"no convergence policy named {request.options.policy}; known: {', '.join(POLICIES)}",
        )
    return Steering(
        policy,
        max_downtime_ms=request.options.max_downtime_ms,
        allow_postcopy=request.options.allow_postcopy,
        seconds_per_gib=request.options.seconds_per_gib,
    )
