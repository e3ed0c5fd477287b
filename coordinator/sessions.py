"""Migration sessions: start, drive, watch, cancel.

Each session is driven by one task through prepare (destination), migrate
(source) and commit or rollback. Every state change is a compare-and-set in
JetStream KV, so a cancel and a completion racing each other have exactly one
winner; the driver re-reads and follows whatever won.
"""

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable

import msgspec
import structlog

from coordinator.agents import AgentClient
from coordinator.placement import rank
from coordinator.session_rules import (
    check_named_dest,
    demand_of,
    find_source,
    host_facts,
    rules_for,
)
from coordinator.session_store import SessionStore, VmClaims
from coordinator.transitions import advance
from proto.agent import (
    BandwidthRequest,
    Decline,
    Offer,
    PrepareRequest,
    SessionProgress,
    SessionRef,
    SessionResult,
    SessionUpdate,
    VmDescription,
)
from proto.agent import (
    MigrateRequest as AgentMigrateRequest,
)
from proto.api import BandwidthChange, HostView, MigrateRequest
from proto.codec import Decoder
from proto.errors import ErrorCode, FerryError
from proto.events import CoordinatorEvent, SessionChanged
from proto.session import (
    Demand,
    Outcome,
    Progress,
    Session,
    SessionCode,
    SessionState,
    Transition,
)

S = SessionState

# How long to wait for news of a running migration before asking the source directly.
RESULT_POLL_SECONDS = 5.0
# Progress goes to KV at most this often (live progress is on the host's session subject).
PROGRESS_PERSIST_SECONDS = 5.0
# The destination may take a moment to report the VM running after the source finished.
COMMIT_ATTEMPTS = 10
COMMIT_RETRY_SECONDS = 0.5


class Superseded(Exception):
    """Another writer (cancel) moved the session; the driver stops and cleans up."""


class SessionManager:
    def __init__(
        self,
        store: SessionStore,
        claims: VmClaims,
        agents: AgentClient,
        hosts: Callable[[], list[HostView]],
        emit: Callable[[list[CoordinatorEvent]], Awaitable[None]],
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._claims = claims
        self._agents = agents
        self._hosts = hosts
        self._emit = emit
        self._wall = wall
        self._monotonic = monotonic
        self._log = structlog.get_logger().bind(component="sessions")
        self._update_decoder = Decoder(SessionUpdate, "session update")  # type: ignore[arg-type]
        # Sessions this coordinator drives, as last written.
        self._active: dict[str, Session] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._results: dict[str, asyncio.Future[SessionResult]] = {}
        self._progress: dict[str, Progress] = {}

    # ----- API -----

    async def start(self, request: MigrateRequest) -> Session:
        hosts = self._hosts()
        source = find_source(request.vm, request.source, hosts)
        if request.dest is not None:
            check_named_dest(request.dest, source.host, hosts)
        now = self._wall()
        session = Session(
            id=secrets.token_hex(6),
            vm=request.vm,
            source=source.host,
            options=request.options,
            state=S.QUEUED,
            created_at=now,
            updated_at=now,
            dest=request.dest,
            dest_requested=request.dest is not None,
            history=[Transition(at=now, state=S.QUEUED)],
        )
        await self._claims.claim(session.vm, session.id)
        try:
            await self._store.create(session)
        except BaseException:
            await self._claims.release(session.vm, session.id)
            raise
        self._active[session.id] = session
        await self._announce(session)
        self._tasks[session.id] = asyncio.create_task(self._drive(session.id), name=f"session-{session.id}")
        return session

    async def get(self, session_id: str) -> Session:
        session, _ = await self._store.get(session_id)
        live = self._progress.get(session_id)
        if live is not None and not session.state.terminal:
            session = msgspec.structs.replace(session, progress=live)
        return session

    async def all(self) -> list[Session]:
        sessions = await self._store.all()
        return [
            msgspec.structs.replace(s, progress=self._progress[s.id])
            if s.id in self._progress and not s.state.terminal
            else s
            for s in sessions
        ]

    def in_flight(self) -> list[Session]:
        return [s for s in self._active.values() if not s.state.terminal]

    async def cancel(self, session_id: str) -> Session:
        session, _ = await self._store.get(session_id)
        if session.state.terminal:
            raise FerryError(ErrorCode.CONFLICT, f"session {session_id} has already ended: {session.state}")
        if session.state == S.POSTCOPY:
            raise FerryError(
                ErrorCode.CONFLICT,
                f"session {session_id} is in post-copy: {session.vm} already runs on {session.dest}; it cannot go back",
            )
        if session.state in (S.QUEUED, S.PREPARING):
            session = await self._change(
                session_id,
                lambda s: advance(s, S.CANCELLED, at=self._wall(), code=SessionCode.CANCELLED, reason="cancelled on request")
                if s.state in (S.QUEUED, S.PREPARING)
                else msgspec.structs.replace(s, cancel_requested=True),
            )
            if session.state == S.CANCELLED:
                await self._announce(session)
                return session
        else:
            session = await self._change(session_id, lambda s: msgspec.structs.replace(s, cancel_requested=True))
        # Migrating: the source aborts the job; the session ends when it confirms.
        try:
            await self._agents.abort(session.source, SessionRef(session_id=session.id, vm=session.vm))
        except FerryError as exc:
            self._log.warning("abort_not_delivered", session_id=session_id, error=str(exc))
        return session

    async def set_bandwidth(self, change: BandwidthChange) -> Session:
        session, _ = await self._store.get(change.id)
        if session.state.terminal:
            raise FerryError(ErrorCode.CONFLICT, f"session {change.id} has already ended: {session.state}")
        if session.state in (S.MIGRATING, S.POSTCOPY):
            await self._agents.bandwidth(
                session.source, BandwidthRequest(session_id=session.id, bandwidth_mib=change.bandwidth_mib)
            )
        return await self._change(
            change.id,
            lambda s: msgspec.structs.replace(
                s, options=msgspec.structs.replace(s.options, bandwidth_mib=change.bandwidth_mib), updated_at=self._wall()
            ),
        )

    # ----- updates from source agents (`ferry.host.*.session.*`) -----

    def on_update(self, data: bytes) -> None:
        try:
            update = self._update_decoder.decode(data)
        except FerryError as exc:
            self._log.warning("bad_session_update", reason=exc.message)
            return
        if isinstance(update, SessionProgress):
            self._progress[update.session_id] = update.progress
            return
        waiter = self._results.get(update.session_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(update)

    # ----- the driver -----

    async def _drive(self, session_id: str) -> None:
        log = self._log.bind(session_id=session_id)
        try:
            await self._run(session_id, log)
        except Superseded:
            log.info("session_superseded")
        except Exception as exc:
            log.exception("session_driver_crashed")
            await self._finish(session_id, S.FAILED, SessionCode.INTERNAL, f"the coordinator failed while driving the session: {exc}")
        finally:
            session = self._active.pop(session_id, None)
            self._tasks.pop(session_id, None)
            self._results.pop(session_id, None)
            self._progress.pop(session_id, None)
            if session is not None:
                try:
                    current, _ = await self._store.get(session_id)
                    if current.state.terminal:
                        await self._claims.release(current.vm, session_id)
                except Exception:
                    log.exception("claim_release_failed")

    async def _run(self, session_id: str, log) -> None:
        session = self._active[session_id]
        log = log.bind(vm=session.vm, source=session.source)
        try:
            vm = await self._agents.describe(session.source, session.vm)
        except FerryError as exc:
            code = SessionCode.SOURCE_UNREACHABLE if exc.code in (ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT) else exc.code
            await self._finish(session_id, S.FAILED, code, exc.message)
            return
        if not vm.running:
            await self._finish(session_id, S.FAILED, ErrorCode.CONFLICT, f"{vm.name} is not running on {session.source}")
            return
        session = await self._move(
            session_id, S.PREPARING, demand=Demand(vcpus=vm.vcpus, memory_mib=vm.memory_mib)
        )
        found = await self._find_destination(session, vm, log)
        if found is None:
            return
        offer, prepared = found
        log = log.bind(dest=offer.host)
        try:
            session = await self._move(session_id, S.MIGRATING, copy_disks=list(offer.copy_disks))
        except Superseded:
            await self._rollback(offer.host, session, log)
            raise
        result = await self._migrate(session, offer, prepared, log)
        if result is None:
            return
        if result.ok:
            await self._commit(session, result, log)
        else:
            await self._rollback(offer.host, session, log)
            if result.aborted:
                await self._finish(session_id, S.CANCELLED, SessionCode.CANCELLED, result.reason, progress=result.last_progress)
            else:
                await self._finish(session_id, S.FAILED, result.code or SessionCode.MIGRATION_FAILED, result.reason, progress=result.last_progress)

    async def _find_destination(
        self, session: Session, vm: VmDescription, log
    ) -> tuple[Offer, PrepareRequest] | None:
        hosts = self._hosts()
        source_view = next((h for h in hosts if h.host == session.source), None)
        if source_view is None:
            await self._finish(session.id, S.FAILED, SessionCode.SOURCE_UNREACHABLE, f"{session.source} no longer reports")
            return None
        if session.dest_requested:
            assert session.dest is not None
            candidates = [session.dest]
        else:
            others = [s for s in self.in_flight() if s.id != session.id]
            ranking = rank(demand_of(vm, source_view), host_facts(hosts, others), rules_for(session))
            candidates = [name for name, _score in ranking.choices]
            if not candidates:
                why = "; ".join(f"{r.host}: {r.reason}" for r in ranking.rejections) or "no other host reports"
                await self._finish(session.id, S.FAILED, SessionCode.NO_DESTINATION, f"no host can take {vm.name}: {why}")
                return None
        declines: list[str] = []
        previous: Decline | None = None
        for host in candidates:
            if previous is not None:
                session = await self._change(
                    session.id,
                    lambda s, host=host, why=previous: advance(
                        s, S.PREPARING, at=self._wall(), code=why.code, reason=f"{why.host} declined: {why.reason}",
                        dest=host, candidates_tried=[*s.candidates_tried, host],
                    ),
                )
            else:
                session = await self._change(
                    session.id, lambda s, host=host: msgspec.structs.replace(s, dest=host, candidates_tried=[host])
                )
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
            if isinstance(reply, Offer):
                log.info("destination_offered", dest=host, copy_disks=reply.copy_disks)
                return reply, request
            previous = reply
            log.info("destination_declined", dest=host, code=reply.code, reason=reply.reason)
            declines.append(f"{host}: {reply.reason}")
            if session.dest_requested:
                await self._finish(session.id, S.FAILED, reply.code, f"{host} declined: {reply.reason}")
                return None
        await self._finish(
            session.id, S.FAILED, SessionCode.NO_DESTINATION, f"every candidate declined {vm.name}: {'; '.join(declines)}"
        )
        return None

    async def _migrate(self, session: Session, offer: Offer, prepared: PrepareRequest, log) -> SessionResult | None:
        waiter: asyncio.Future[SessionResult] = asyncio.get_running_loop().create_future()
        self._results[session.id] = waiter
        request = AgentMigrateRequest(
            session_id=session.id,
            vm=session.vm,
            dest=offer.host,
            peer_uri=offer.peer_uri,
            migration_address=offer.migration_address,
            options=session.options,
            copy_disks=list(offer.copy_disks),
        )
        try:
            state = await self._agents.migrate(session.source, request)
        except FerryError as exc:
            await self._rollback(offer.host, session, log)
            await self._finish(session.id, S.FAILED, SessionCode.SOURCE_UNREACHABLE, f"{session.source} did not start the migration: {exc.message}")
            return None
        if state.result is not None and not waiter.done():
            waiter.set_result(state.result)
        last_persist = self._monotonic()
        abort_sent = False
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), timeout=RESULT_POLL_SECONDS / 5)
            except TimeoutError:
                pass
            current = self._active.get(session.id, session)
            if current.cancel_requested and not abort_sent:
                # A cancel that raced the start of the job: say it again now the job exists.
                reply = await self._agents.abort(session.source, SessionRef(session_id=session.id, vm=session.vm))
                abort_sent = reply.aborted
            if self._monotonic() - last_persist >= PROGRESS_PERSIST_SECONDS:
                last_persist = self._monotonic()
                live = self._progress.get(session.id)
                if live is not None:
                    await self._change(session.id, lambda s, live=live: msgspec.structs.replace(s, progress=live))
                try:
                    # Prepare again: the same offer, and the destination's lease renewed.
                    await self._agents.prepare(offer.host, prepared)
                except FerryError as exc:
                    log.warning("lease_not_renewed", dest=offer.host, error=exc.message)
                try:
                    # Results are published once; a missed one is fetched (migrate is idempotent).
                    state = await self._agents.migrate(session.source, request)
                    if state.result is not None and not waiter.done():
                        waiter.set_result(state.result)
                except FerryError as exc:
                    log.warning("source_silent", error=exc.message)

    async def _commit(self, session: Session, result: SessionResult, log) -> None:
        ref = SessionRef(session_id=session.id, vm=session.vm)
        assert session.dest is not None
        confirmation = None
        for _ in range(COMMIT_ATTEMPTS):
            try:
                confirmation = await self._agents.commit(session.dest, ref)
                if confirmation.vm_running:
                    break
            except FerryError as exc:
                log.warning("commit_unanswered", error=exc.message)
            await asyncio.sleep(COMMIT_RETRY_SECONDS)
        if confirmation is None or not confirmation.vm_running:
            # The source handed the VM over but the destination does not show it
            # running. Nothing is removed anywhere; an operator must look.
            log.error("vm_not_confirmed", dest=session.dest)
            await self._finish(
                session.id, S.FAILED, SessionCode.NOT_CONFIRMED,
                f"{session.source} finished the migration but {session.dest} does not report {session.vm} running; "
                "nothing was cleaned up",
                progress=result.last_progress,
            )
            return
        try:
            await self._agents.commit(session.source, ref)
        except FerryError as exc:
            log.warning("source_cleanup_failed", error=exc.message)
        outcome = _merge_outcomes(result.outcome, confirmation.outcome)
        await self._finish(session.id, S.COMPLETED, "", "", outcome=outcome, progress=result.last_progress)

    async def _rollback(self, host: str, session: Session, log) -> None:
        try:
            reply = await self._agents.rollback(host, SessionRef(session_id=session.id, vm=session.vm))
            log.info("destination_rolled_back", dest=host, removed=reply.removed)
        except FerryError as exc:
            # The lease on the destination removes what it prepared anyway.
            log.warning("rollback_failed", dest=host, error=exc.message)

    # ----- writing sessions -----

    async def _change(self, session_id: str, fn: Callable[[Session], Session]) -> Session:
        try:
            session = await self._store.change(session_id, fn)
        except FerryError as exc:
            if exc.code == ErrorCode.CONFLICT:
                raise Superseded(exc.message) from None
            raise
        if session_id in self._active:
            self._active[session_id] = session
        return session

    async def _move(self, session_id: str, state: SessionState, **changes) -> Session:
        session = await self._change(session_id, lambda s: advance(s, state, at=self._wall(), **changes))
        await self._announce(session)
        return session

    async def _finish(
        self,
        session_id: str,
        state: SessionState,
        code: str,
        reason: str,
        *,
        outcome: Outcome | None = None,
        progress: Progress | None = None,
    ) -> None:
        def finish(s: Session) -> Session:
            extra = {}
            if outcome is not None:
                extra["outcome"] = outcome
            if progress is not None:
                extra["progress"] = progress
            return advance(s, state, at=self._wall(), code=str(code), reason=reason, **extra)

        try:
            session = await self._change(session_id, finish)
        except Superseded:
            return
        await self._announce(session)

    async def _announce(self, session: Session) -> None:
        await self._emit(
            [
                SessionChanged(
                    session_id=session.id,
                    vm=session.vm,
                    state=session.state,
                    source=session.source,
                    dest=session.dest,
                    code=session.code,
                    reason=session.reason,
                )
            ]
        )

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()


def _merge_outcomes(source: Outcome | None, dest: Outcome | None) -> Outcome:
    """Downtime only the destination knows; total time from whichever has it."""
    source = source or Outcome()
    dest = dest or Outcome()
    return Outcome(
        total_time_ms=dest.total_time_ms or source.total_time_ms,
        downtime_ms=dest.downtime_ms,
        data_transferred=dest.data_transferred or source.data_transferred,
    )
