"""The driver: one task per admitted session, a reconciler.

Each turn it asks both agents what they know of the session (`jobs`: from
libvirt and their journals), lets coordinator/session_steps.py decide the next
step from the stored record plus those answers, and carries the step out. An
action that already knows what the next turn would see (an offer just made, a
job just started) hands that on instead of asking again.

Faults of the bus are not failures of the move: a request that times out, a
KV write that fails, or any exception is logged, backed off and tried again;
the step's deadline (session_steps.deadline) is what ends a session that
cannot go on, never an exception.
"""

import asyncio

import msgspec
import structlog

from ferry.coordinator import session_steps as steps
from ferry.coordinator.progress_estimate import ProgressEstimator, expected_bytes
from ferry.coordinator.session_rules import fresh_rate, prediction_for
from ferry.coordinator.session_steps import HostSide, Observed
from ferry.coordinator.sessions.book import RecordBook, Superseded, unsettled
from ferry.coordinator.sessions.ports import AgentPort, Clock, Hosts, LimitsNow
from ferry.coordinator.sessions.scheduler import Scheduler
from ferry.coordinator.sessions.sharing import BandwidthShare
from ferry.coordinator.transitions import advance
from ferry.proto.agent import (
    Decline,
    DirtyRate,
    JobReport,
    JobRole,
    JobsRequest,
    MeasureRequest,
    Offer,
    PrepareRequest,
    SessionRef,
    SessionResult,
    VmDescription,
)
from ferry.proto.agent import MigrateRequest as AgentMigrateRequest
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.session import Demand, Outcome, Progress, Session, SessionCode, SessionState

S = SessionState

# Progress goes to KV at most this often (live progress is on the host's session subject).
PROGRESS_PERSIST_SECONDS = 5.0
# The destination may take a moment to report the VM running after the source finished.
COMMIT_ATTEMPTS = 10
COMMIT_RETRY_SECONDS = 0.5
# How long a session waits for the guest's dirty-rate measurement (it takes about 1 s).
MEASURE_WAIT_SECONDS = 3.0
# A failed turn is tried again after this, doubling up to the cap.
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
# A source that has not cleaned up after this long is given up on (its journal
# forgets the session after an hour too); the images stay, and an error says so.
CLEANUP_GIVE_UP_SECONDS = 3600.0
# Sources refuse a migrate request for good with these (anything else may be the bus).
_REFUSALS = (
    ErrorCode.CONFLICT, ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_VM, ErrorCode.NOT_FOUND,
    ErrorCode.TLS_REQUIRED, ErrorCode.PEER_REFUSED,
)
# Refusals that are the session's own code: the operator's fix is the source's config
# (`ferry migrate --no-tls` against an agent that requires TLS ends `tls_required`).
_OWN_CODES = {ErrorCode.TLS_REQUIRED: SessionCode.TLS_REQUIRED, ErrorCode.PEER_REFUSED: SessionCode.PEER_REFUSED}


class _Ended:
    """The driver's action ended the session itself."""


ENDED = _Ended()
Next = Observed | None | _Ended


class Driver:
    def __init__(
        self,
        book: RecordBook,
        scheduler: Scheduler,
        share: BandwidthShare,
        agents: AgentPort,
        hosts: Hosts,
        limits: LimitsNow,
        clock: Clock,
    ) -> None:
        self._book = book
        self._scheduler = scheduler
        self._share = share
        self._agents = agents
        self._hosts = hosts
        self._limits = limits
        self._clock = clock
        self._log = structlog.get_logger().bind(component="sessions")
        self._tasks: dict[str, asyncio.Task] = {}
        # Results the sources published, caught for the driver's next turn.
        self._results: dict[str, SessionResult] = {}
        self._news: dict[str, asyncio.Event] = {}
        self._progress: dict[str, Progress] = {}
        self._estimators: dict[str, ProgressEstimator] = {}
        # The prepare request each destination took: repeated to renew its lease.
        self._prepared: dict[str, tuple[str, PrepareRequest]] = {}
        self._unconfirmed: set[str] = set()
        # Completed sessions whose source has not removed what was copied away yet:
        # session id -> (source, ref, first failure).
        self._cleanups: dict[str, tuple[str, SessionRef, float]] = {}

    # ----- what others see -----

    def running(self, session_id: str) -> bool:
        return session_id in self._tasks

    def progress(self, session_id: str) -> Progress | None:
        return self._progress.get(session_id)

    def on_progress(self, session_id: str, progress: Progress) -> None:
        if session_id in self._tasks:
            estimator = self._estimators.get(session_id)
            if estimator is None:
                session = self._book.current(session_id)
                estimator = self._estimators[session_id] = ProgressEstimator(
                    expected_bytes(session.prediction if session is not None else None)
                )
            e = estimator.update(progress)
            self._progress[session_id] = msgspec.structs.replace(
                progress, percent=e.percent, eta_seconds=e.eta_seconds, eta_low=e.eta_low, eta_high=e.eta_high
            )

    def on_result(self, result: SessionResult) -> None:
        if result.session_id in self._tasks:
            self._results[result.session_id] = result
            self._news[result.session_id].set()

    def remember_unconfirmed(self, session: Session) -> None:
        if unsettled(session):
            self._unconfirmed.add(session.id)

    # ----- starting -----

    def spawn(self, session_id: str, alternatives: list[str], seen: Observed | None = None) -> None:
        """Drive an admitted (or adopted) session. `seen`: what the agents are known
        to hold, when the caller knows (a fresh admission: nothing anywhere)."""
        if session_id in self._tasks:
            return
        self._news[session_id] = asyncio.Event()
        self._tasks[session_id] = asyncio.create_task(
            self._drive(session_id, alternatives, seen), name=f"session-{session_id}"
        )

    def fresh(self) -> Observed:
        """A session admitted a moment ago: no agent holds anything for it yet."""
        nothing = HostSide(answered=True)
        return Observed(source=nothing, dest=nothing, now=self._clock.wall())

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # ----- the loop -----

    async def _drive(self, session_id: str, alternatives: list[str], seen: Observed | None) -> None:
        log = self._log.bind(session_id=session_id)
        failures = 0
        try:
            while True:
                session = self._book.current(session_id)
                if session is None or session.state == S.QUEUED:
                    return
                if session.state.terminal:
                    await self._after_end(session, log)
                    return
                try:
                    if seen is None:
                        seen = await self._observe(session)
                    step = steps.step(session, seen)
                    log.debug("session_step", state=str(session.state), step=type(step).__name__)
                    outcome = await self._act(session, step, alternatives, log)
                    alternatives = []
                    failures = 0
                except Superseded:
                    outcome = None
                    await self._book.reload(session_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    delay = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (failures - 1))
                    if isinstance(exc, FerryError):
                        log.warning("session_step_failed", error=exc.message, retry_in=delay)
                    else:
                        log.warning("session_step_failed", error=str(exc) or type(exc).__name__, retry_in=delay, exc_info=True)
                    await self._clock.sleep(delay)
                    outcome = None
                    try:
                        # The write that failed may have landed: decide from the stored record.
                        await self._book.reload(session_id)
                    except Exception as reload_error:
                        log.info("session_reload_failed", error=str(reload_error) or type(reload_error).__name__)
                if outcome is ENDED:
                    return
                seen = outcome if isinstance(outcome, Observed) else None
        finally:
            await self._forget(session_id, log)

    async def _forget(self, session_id: str, log) -> None:
        self._tasks.pop(session_id, None)
        self._results.pop(session_id, None)
        self._news.pop(session_id, None)
        self._progress.pop(session_id, None)
        self._estimators.pop(session_id, None)
        self._prepared.pop(session_id, None)
        self._scheduler.free(session_id)
        had_share = self._share.forget(session_id)
        current = self._book.current(session_id)
        if current is not None:
            try:
                await self._book.settle(current)
            except Exception:
                log.exception("claim_release_failed")
            self.remember_unconfirmed(current)
        if had_share:
            try:
                await self._share.rebalance()
            except Exception:
                log.exception("rebalance_failed")

    async def _after_end(self, session: Session, log) -> None:
        """Someone else ended the session (a cancel while preparing): what its
        destination prepared goes."""
        if session.state != S.COMPLETED and session.dest is not None and not unsettled(session):
            await self._rollback(session.dest, session, log)

    async def _observe(self, session: Session) -> Observed:
        request = JobsRequest(session_ids=[session.id], vms=[session.vm])
        source, dest = await asyncio.gather(
            self._ask(session.source, request, session),
            self._ask(session.dest, request, session) if session.dest else _silent(),
        )
        return Observed(source=source, dest=dest, now=self._clock.wall(), result=self._results.get(session.id))

    async def _ask(self, host: str, request: JobsRequest, session: Session) -> HostSide:
        try:
            reply = await self._agents.jobs(host, request)
        except asyncio.CancelledError:
            raise
        except Exception:
            return steps.SILENT
        job = next((j for j in reply.jobs if j.session_id == session.id), None)
        state = next((p.state for p in reply.vms if p.vm == session.vm), None)
        return HostSide(answered=True, job=job, vm_state=state)

    async def _act(self, session: Session, step: steps.Step, alternatives: list[str], log) -> Next:
        match step:
            case steps.Prepare():
                return await self._prepare(session, alternatives, log)
            case steps.StartMigration(offer=offer):
                return await self._start(session, offer, None, None, log)
            case steps.MarkMigrating():
                await self._book.move(session.id, S.MIGRATING)
                return None
            case steps.Follow(seconds=seconds, abort=abort):
                return await self._follow(session, seconds, abort, log)
            case steps.Commit(result=result):
                return await self._commit(session, result, log)
            case steps.RollBack(state=state, code=code, reason=reason, result=result):
                if session.dest is not None and not await self._rollback(session.dest, session, log):
                    return None  # the destination still runs an incoming job: look again
                await self._end(
                    session, state, code, reason,
                    progress=result.last_progress if result else None, steering=result.actions if result else None,
                    encryption=result.encryption if result else None,
                )
                return ENDED
            case steps.NotConfirmed(reason=reason):
                log.error("vm_not_confirmed", vm=session.vm, source=session.source, dest=session.dest, reason=reason)
                await self._end(session, S.FAILED, SessionCode.NOT_CONFIRMED, reason)
                return ENDED
            case steps.Retry(reason=reason, seconds=seconds):
                log.info("session_waits", reason=reason, seconds=seconds)
                await self._clock.sleep(seconds)
                return None
            case steps.Expire(reason=reason):
                await self._end(session, S.FAILED, SessionCode.TIMED_OUT, reason)
                return ENDED
        return ENDED

    async def _end(self, session: Session, state: SessionState, code: str, reason: str, **extra) -> None:
        await self._book.finish(session.id, state, code, reason, **extra)

    # ----- preparing -----

    async def _prepare(self, session: Session, alternatives: list[str], log) -> Next:
        log = log.bind(vm=session.vm, source=session.source)
        try:
            vm = await self._agents.describe(session.source, session.vm)
        except FerryError as exc:
            if exc.code in (ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT):
                raise  # the bus, or an agent restarting: try again until the deadline
            await self._end(session, S.FAILED, exc.code, exc.message)
            return ENDED
        if not vm.running:
            await self._end(session, S.FAILED, ErrorCode.CONFLICT, f"{vm.name} is not running on {session.source}")
            return ENDED
        session = await self._book.change(
            session.id, lambda s: msgspec.structs.replace(s, demand=Demand(vcpus=vm.vcpus, memory_mib=vm.memory_mib))
        )
        # A guest never measured (or long ago) is measured while the destination prepares.
        measuring = (
            None if fresh_rate(vm, self._clock.wall()) else asyncio.create_task(self._measure(session.source, vm.name, log))
        )
        try:
            found = await self._find_destination(session, vm, alternatives, log)
            if found is None:
                return ENDED
            rate = None
            if measuring is not None:
                # A prediction is advice: a slow measurement does not hold the move up.
                done, _ = await asyncio.wait({measuring}, timeout=MEASURE_WAIT_SECONDS)
                rate = measuring.result() if done else None
        finally:
            if measuring is not None and not measuring.done():
                measuring.cancel()
        session = self._book.current(session.id) or session
        return await self._start(session, found, vm, rate, log)

    async def _measure(self, host: str, vm: str, log) -> DirtyRate | None:
        try:
            return await self._agents.measure(host, MeasureRequest(vm=vm))
        except FerryError as exc:
            # A prediction is advice: the migration goes ahead without one.
            log.info("dirty_rate_not_measured", error=exc.message)
            return None

    async def _find_destination(self, session: Session, vm: VmDescription, alternatives: list[str], log) -> Offer | None:
        """Prepare the admitted destination; on a decline, the next alternative
        that still has an inbound slot, or back to the queue if they are all busy."""
        source_view = next((h for h in self._hosts() if h.host == session.source), None)
        if source_view is None:
            await self._end(session, S.FAILED, SessionCode.SOURCE_UNREACHABLE, f"{session.source} no longer reports")
            return None
        assert session.dest is not None
        host = session.dest
        remaining = [h for h in alternatives if h != host]
        declines: list[str] = []
        while True:
            request = PrepareRequest(
                session_id=session.id,
                vm=vm,
                source=session.source,
                source_versions=source_view.versions,
                options=session.options,
            )
            try:
                reply = await self._agents.prepare(host, request)
            except FerryError as exc:
                reply = Decline(session_id=session.id, host=host, code=SessionCode.DEST_UNREACHABLE, reason=exc.message)
            closed = self._closed(host)
            if isinstance(reply, Offer) and closed is not None and not session.dest_requested:
                # The host began draining (or was cordoned) after admission: do not bring
                # it a VM it must send away again, or that it was closed to.
                await self._rollback(host, session, log)
                reply = Decline(session_id=session.id, host=host, code=closed[0], reason=closed[1])
            if isinstance(reply, Offer):
                log.info("destination_offered", dest=host, copy_disks=reply.copy_disks)
                self._prepared[session.id] = (host, request)
                return reply
            log.info("destination_declined", dest=host, code=reply.code, reason=reply.reason)
            declines.append(f"{host}: {reply.reason}")
            if session.dest_requested:
                await self._end(session, S.FAILED, reply.code, f"{host} declined: {reply.reason}")
                return None
            why = f"{host} declined: {reply.reason}"
            with_room = [h for h in remaining if self._scheduler.has_room(h, ignoring=session.id)]
            if not with_room:
                if remaining:
                    # Hosts that could take it are all receiving their limit: wait for one.
                    self._scheduler.free(session.id)
                    await self._book.change(
                        session.id,
                        lambda s, why=why, code=reply.code: advance(
                            s, S.QUEUED, at=self._clock.wall(), code=code, reason=why, dest=None
                        ),
                    )
                    return None
                await self._end(
                    session, S.FAILED, SessionCode.NO_DESTINATION,
                    f"every candidate declined {vm.name}: {'; '.join(declines)}",
                )
                return None
            host = with_room[0]
            remaining.remove(host)
            # Move the slot before the first await: the scheduler must count it there.
            self._scheduler.take(session.id, session.source, host)
            session = await self._book.change(
                session.id,
                lambda s, host=host, why=why, code=reply.code: advance(
                    s, S.PREPARING, at=self._clock.wall(), code=code, reason=why,
                    dest=host, candidates_tried=[*s.candidates_tried, host],
                ),
            )

    def _closed(self, host: str) -> tuple[str, str] | None:
        """(code, sentence) when no new VM may go to the host now, else None."""
        view = next((h for h in self._hosts() if h.host == host), None)
        if view is not None and view.draining:
            return "host_draining", f"{host} began draining; no new VMs are placed there"
        if view is not None and view.cordoned:
            return "host_cordoned", f"{host} was cordoned; no new VMs are placed there"
        return None

    # ----- migrating -----

    async def _start(
        self, session: Session, offer: Offer, vm: VmDescription | None, rate: DirtyRate | None, log
    ) -> Next:
        """Record `migrating` first, then ask the source: a crash in between leaves
        a record that says migrating and a source that never heard of it, which
        the next turn starts again (the source takes a session's request once)."""
        log = log.bind(dest=offer.host)
        mismatch = steps.peer_mismatch(offer, self._hosts())
        if mismatch is not None:
            # Before `migrating` is recorded: the source never hears of this peer.
            log.error("peer_mismatch", offered=offer.peer_uri, reason=mismatch)
            await self._rollback(offer.host, session, log)
            await self._end(session, S.FAILED, SessionCode.PEER_MISMATCH, f"{session.vm} stays on {session.source}: {mismatch}")
            return ENDED
        share = await self._share.rebalance(starting=session.id)
        if session.state == S.PREPARING:
            if vm is None:
                vm = await self._agents.describe(session.source, session.vm)
            try:
                session = await self._book.move(
                    session.id, S.MIGRATING, copy_disks=list(offer.copy_disks), bandwidth_applied_mib=share,
                    prediction=prediction_for(session, vm, rate, share),
                )
            except Superseded:
                self._share.forget(session.id)
                raise
        request = AgentMigrateRequest(
            session_id=session.id,
            vm=session.vm,
            dest=offer.host,
            peer_uri=offer.peer_uri,
            migration_address=offer.migration_address,
            options=msgspec.structs.replace(session.options, bandwidth_mib=share or session.bandwidth_applied_mib),
            copy_disks=list(offer.copy_disks),
        )
        try:
            state = await self._agents.migrate(session.source, request)
        except FerryError as exc:
            if exc.code not in _REFUSALS:
                raise  # did it arrive? the source's journal will say
            await self._rollback(offer.host, session, log)
            await self._end(
                session, S.FAILED, _OWN_CODES.get(exc.code, SessionCode.MIGRATION_FAILED),
                f"{session.source} did not start the migration: {exc.message}",
            )
            return ENDED
        if state.result is not None:
            self._results[session.id] = state.result
        started = JobReport(session_id=session.id, vm=session.vm, role=JobRole.SOURCE, job_running=state.running, started=True, result=state.result)
        held = JobReport(session_id=session.id, vm=session.vm, role=JobRole.DESTINATION, offer=offer)
        return Observed(
            source=HostSide(answered=True, job=started),
            dest=HostSide(answered=True, job=held),
            now=self._clock.wall(),
            result=state.result,
        )

    async def _follow(self, session: Session, seconds: float, abort: str, log) -> Next:
        if abort:
            try:
                reply = await self._agents.abort(session.source, SessionRef(session_id=session.id, vm=session.vm))
                log.info("abort_sent", reason=abort, aborted=reply.aborted)
            except FerryError as exc:
                log.warning("abort_not_delivered", error=exc.message)
        news = self._news[session.id]
        news.clear()
        if session.id not in self._results:
            heard = asyncio.ensure_future(news.wait())
            timer = asyncio.ensure_future(self._clock.sleep(seconds))
            try:
                await asyncio.wait({heard, timer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                heard.cancel()
                timer.cancel()
        if session.id in self._results:
            return None
        live = self._progress.get(session.id)
        if live is not None and live != session.progress:
            await self._book.change(session.id, lambda s, live=live: msgspec.structs.replace(s, progress=live))
        prepared = self._prepared.get(session.id)
        if prepared is not None:
            try:
                # Prepare again: the same offer, and the destination's lease renewed.
                await self._agents.prepare(*prepared)
            except FerryError as exc:
                log.warning("lease_not_renewed", dest=prepared[0], error=exc.message)
        return None

    async def _commit(self, session: Session, result: SessionResult | None, log) -> Next:
        """The destination confirms the VM runs there (it is asked several times: its
        agent may be restarting), then the source removes what was copied away."""
        ref = SessionRef(session_id=session.id, vm=session.vm)
        assert session.dest is not None
        confirmation = None
        for attempt in range(COMMIT_ATTEMPTS):
            if attempt:
                await self._clock.sleep(COMMIT_RETRY_SECONDS)
            try:
                confirmation = await self._agents.commit(session.dest, ref)
            except FerryError as exc:
                log.warning("commit_unanswered", dest=session.dest, error=exc.message)
                continue
            if confirmation.vm_running:
                break
        if confirmation is None or not confirmation.vm_running:
            return None  # where does it run? both agents are asked again
        try:
            await self._agents.commit(session.source, ref)
        except FerryError as exc:
            # The source's journal keeps what it must remove (images copied away):
            # the cleanup is asked for again until the source answers.
            log.warning("source_cleanup_failed", source=session.source, error=exc.message)
            self._cleanups.setdefault(session.id, (session.source, ref, self._clock.wall()))
        reason = "settled later: the VM runs on the destination" if unsettled(session) else ""
        await self._end(
            session, S.COMPLETED, "", reason,
            outcome=_merge_outcomes(result.outcome if result else None, confirmation.outcome),
            progress=result.last_progress if result else None,
            steering=result.actions if result else None,
            encryption=result.encryption if result else None,
        )
        return ENDED

    async def _rollback(self, host: str, session: Session, log) -> bool:
        """Remove what `host` prepared for the session. False while an incoming job
        still runs there (only the source can end it)."""
        try:
            reply = await self._agents.rollback(host, SessionRef(session_id=session.id, vm=session.vm))
        except FerryError as exc:
            if exc.code == ErrorCode.CONFLICT and "still running" in exc.message:
                log.info("rollback_waits", dest=host, reason=exc.message)
                return False
            # The destination's lease removes what it prepared anyway.
            log.warning("rollback_failed", dest=host, error=exc.message)
            return True
        log.info("destination_rolled_back", dest=host, removed=reply.removed)
        return True

    # ----- looking again: unfinished cleanups, sessions nobody could confirm -----

    async def retry_cleanups(self) -> None:
        for session_id, (source, ref, since) in list(self._cleanups.items()):
            log = self._log.bind(session_id=session_id, source=source)
            try:
                reply = await self._agents.commit(source, ref)
            except FerryError as exc:
                if self._clock.wall() - since > CLEANUP_GIVE_UP_SECONDS:
                    log.error("source_cleanup_abandoned", error=exc.message, vm=ref.vm)
                    del self._cleanups[session_id]
                continue
            log.info("source_cleaned_up_later", removed=reply.removed)
            del self._cleanups[session_id]

    async def settle_unconfirmed(self) -> None:
        """Look again at sessions that ended `not_confirmed`; settle those a host can now tell about."""
        for session_id in list(self._unconfirmed):
            log = self._log.bind(session_id=session_id)
            try:
                session = await self._book.reload(session_id)
                if not unsettled(session):
                    self._unconfirmed.discard(session_id)
                    continue
                self._book.hold(session)
                step = steps.settle_unconfirmed(session, await self._observe(session))
                # Nothing known yet, or not done (no confirmation, an incoming job
                # still running): looked at again next time.
                if not isinstance(step, steps.Commit | steps.RollBack) or await self._act(session, step, [], log) is not ENDED:
                    continue
                settled = await self._book.reload(session_id)
                log.info("session_settled", state=str(settled.state), code=settled.code)
                self._unconfirmed.discard(session_id)
                await self._book.settle(settled)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("settle_failed", error=str(exc) or type(exc).__name__)


async def _silent() -> HostSide:
    return steps.SILENT


def _merge_outcomes(source: Outcome | None, dest: Outcome | None) -> Outcome:
    """Downtime only the destination knows; total time from whichever has it."""
    source = source or Outcome()
    dest = dest or Outcome()
    return Outcome(
        total_time_ms=dest.total_time_ms or source.total_time_ms,
        downtime_ms=dest.downtime_ms,
        data_transferred=dest.data_transferred or source.data_transferred,
    )
