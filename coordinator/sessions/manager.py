"""The API face of sessions: start, plan, read, cancel, change bandwidth; and
`adopt`, which takes over every session the store holds after a start or a
takeover.

A new session waits in `queued` until the scheduler admits it; then a driver
(a reconciler) takes it through prepare, migrate and commit or rollback.
Every state change is a compare-and-set in the record store, so a cancel and
a completion racing each other have exactly one winner; the driver re-reads
and follows whatever won.
"""

import asyncio
import secrets
import time
from collections.abc import Callable

import msgspec
import structlog

from ferry.coordinator.cordons import refuse_cordoned_dest
from ferry.coordinator.placement import CANDIDATES_SHOWN, PlacementRules, VmDemand
from ferry.coordinator.placement_index import PlacementIndex, Shortlist, shortlist_lines
from ferry.coordinator.session_rules import (
    FactsCache,
    check_named_dest,
    check_policy,
    find_source,
    held_room,
    lists_vm,
    prediction_for,
    reported_demand,
    rules_for,
)
from ferry.coordinator.sessions.book import RecordBook, Superseded, unsettled
from ferry.coordinator.sessions.driver import Driver
from ferry.coordinator.sessions.levers import Levers
from ferry.coordinator.sessions.ports import AgentPort, ClaimStore, Clock, Emit, Hosts, LimitsNow, RecordStore
from ferry.coordinator.sessions.scheduler import Scheduler
from ferry.coordinator.sessions.sharing import BandwidthShare
from ferry.coordinator.transitions import advance
from ferry.proto import subjects
from ferry.proto.agent import MeasureRequest, SessionProgress, SessionRef, SessionSteered, SessionUpdate
from ferry.proto.api import BandwidthChange, DowntimeChange, HostView, MigrateRequest, PlanReply
from ferry.proto.codec import Decoder
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.limits import Limits
from ferry.proto.session import Demand, Session, SessionCode, SessionOrigin, SessionState, Transition

S = SessionState

# Sessions that ended `not_confirmed`, and sources that did not clean up, are looked at again this often.
SETTLE_SECONDS = 5.0


class SessionManager:
    def __init__(
        self,
        store: RecordStore,
        claims: ClaimStore,
        agents: AgentPort,
        hosts: Hosts,
        emit: Emit,
        limits: LimitsNow = Limits,
        *,
        clock: Clock = Clock(),
        locate: Callable[[str], list[str]] | None = None,
    ) -> None:
        self._store = store
        self._agents = agents
        self._hosts = hosts
        # The hosts whose reports list a VM (the registry's index); None: look through them all.
        self._locate = locate
        self._facts = FactsCache()
        self._index = PlacementIndex()
        self._emit = emit
        self._clock = clock
        self._log = structlog.get_logger().bind(component="sessions")
        self._update_decoder = Decoder(SessionUpdate, "session update")  # type: ignore[arg-type]
        self._book = RecordBook(store, claims, emit, clock.wall)
        self._scheduler = Scheduler(self._book, hosts, limits, emit, clock.wall, facts=self._facts)
        self._share = BandwidthShare(self._book, agents, limits, emit)
        self._driver = Driver(self._book, self._scheduler, self._share, agents, hosts, limits, clock)
        self._levers = Levers(self._book, store, agents, emit, clock)
        # Set once the registry is warm and every stored session is adopted:
        # until then nothing is scheduled and no move starts.
        self._ready = asyncio.Event()

    # ----- start and takeover -----

    async def adopt(self) -> int:
        """Take over every session the store holds: queued ones wait for admission,
        running ones get a driver that first asks the agents where things stand,
        and their slots and bandwidth shares are counted again before anything
        else is admitted. Call once the registry is warm."""
        adopted = 0
        stored = await self._book.stored()
        released = await self._book.release_stale(stored)
        if released:
            self._log.info("stale_claims_released", count=released)
        for session in stored:
            if unsettled(session):
                self._driver.remember_unconfirmed(session)
                continue
            if session.state.terminal or self._book.current(session.id) is not None:
                continue
            self._book.hold(session)
            adopted += 1
            if session.state != S.QUEUED and session.dest is not None:
                self._scheduler.take(session.id, session.source, session.dest)
                self._share.adopt(session)
        for session in self._book.in_flight():
            if session.state != S.QUEUED:
                self._log.info("session_adopted", session_id=session.id, vm=session.vm, state=str(session.state))
                self._driver.spawn(session.id, [])
        self._ready.set()
        self._scheduler.wake()
        return adopted

    async def run(self) -> None:
        """The scheduler and the settling of unconfirmed sessions (after `adopt`)."""
        await self._ready.wait()
        await asyncio.gather(self._scheduler.run(self._admitted), self._settle_loop())

    def _admitted(self, session_id: str, alternatives: list[str]) -> None:
        self._driver.spawn(session_id, alternatives, self._driver.fresh())

    async def _settle_loop(self) -> None:
        while True:
            # A cadence, not a deadline: real time even under a test's virtual clock.
            await asyncio.sleep(SETTLE_SECONDS)
            await self._book.retry_releases()
            await self._driver.retry_cleanups()
            await self._driver.settle_unconfirmed()

    # ----- API -----

    async def start(
        self,
        request: MigrateRequest,
        *,
        origin: SessionOrigin = SessionOrigin.USER,
        drain_host: str | None = None,
        requested_by: str = "",
        hint: str | None = None,
        avoid: list[str] | None = None,
    ) -> Session:
        """Queue a session. `hint`: a destination preferred if it can take the VM
        (a drain's plan); `avoid`: hosts not to use."""
        check_policy(request.options)
        await self._ready.wait()
        hosts = self._hosts()
        source = find_source(request.vm, request.source, hosts, self._located(request.vm))
        if request.dest is not None:
            check_named_dest(request.dest, source.host, hosts)
            refuse_cordoned_dest(request.dest, hosts)
        demand = reported_demand(request.vm, source)
        now = self._clock.wall()
        session = Session(
            id=secrets.token_hex(6),
            vm=request.vm,
            source=source.host,
            options=request.options,
            state=S.QUEUED,
            created_at=now,
            updated_at=now,
            dest=request.dest or hint,
            dest_requested=request.dest is not None,
            history=[Transition(at=now, state=S.QUEUED)],
            demand=Demand(vcpus=demand.vcpus, memory_mib=demand.memory_mib),
            origin=origin,
            drain_host=drain_host,
            requested_by=requested_by,
            avoid=list(avoid or []),
        )
        await self._book.create(session)
        self._scheduler.wake()
        return session

    async def plan(self, request: MigrateRequest) -> PlanReply:
        """A dry run: the checks of `start`, the destination placement would pick,
        and a prediction from the guest's dirty rate measured now. Nothing changes."""
        started = time.perf_counter()
        check_policy(request.options)
        hosts = self._hosts()
        source = find_source(request.vm, request.source, hosts, self._located(request.vm))
        draft = Session(
            id="dryrun", vm=request.vm, source=source.host, options=request.options, state=S.QUEUED,
            created_at=0.0, updated_at=0.0,
        )
        if request.dest is not None:
            check_named_dest(request.dest, source.host, hosts)
            refuse_cordoned_dest(request.dest, hosts)
            candidates, rejections, ranked, candidate_count = [request.dest], [], 1, 1
        else:
            short = self._shortlist(reported_demand(request.vm, source), hosts, rules_for(draft))
            candidates = [name for name, _score in short.choices]
            rejections, ranked, candidate_count = shortlist_lines(short), short.hosts, short.candidate_count
        placed = time.perf_counter()
        vm = await self._agents.describe(source.host, request.vm)
        note, prediction = "", None
        measuring = time.perf_counter()
        try:
            rate = await self._agents.measure(source.host, MeasureRequest(vm=request.vm))
        except FerryError as exc:
            note = f"no prediction: {exc.message}"
        else:
            prediction = prediction_for(draft, vm, rate, request.options.bandwidth_mib)
        measured = time.perf_counter()
        return PlanReply(
            vm=request.vm,
            source=source.host,
            dest=candidates[0] if candidates else None,
            candidates=candidates[:CANDIDATES_SHOWN],
            rejections=rejections,
            policy=request.options.policy,
            prediction=prediction,
            note=note,
            candidate_count=candidate_count,
            hosts_ranked=ranked,
            placement_ms=round(1000 * (placed - started), 3),
            measure_ms=round(1000 * (measured - measuring), 3),
        )

    def refresh_placement(self) -> None:
        """Bring the placement index up to date (each sweep): a dry run then sorts only
        what changed since, and the first one after a takeover does not sort 5,000 hosts."""
        self._index.sync(self._facts.all(self._hosts()))

    def _shortlist(self, vm: VmDemand, hosts: list[HostView], rules: PlacementRules) -> Shortlist:
        """The best hosts for `vm` from the placement index, kept up to date with the
        views (only hosts whose view is a new object are sorted again)."""
        self._index.sync(self._facts.all(hosts))
        locate = self._locate
        reports = (lambda host, vm: host in locate(vm)) if locate is not None else lists_vm(hosts)
        return self._index.shortlist(vm, rules, held_room(self.holding(), reports), CANDIDATES_SHOWN)

    def _live(self, session: Session) -> Session:
        live = self._driver.progress(session.id)
        if live is not None and not session.state.terminal:
            return msgspec.structs.replace(session, progress=live)
        return session

    async def get(self, session_id: str) -> Session:
        session, _ = await self._store.get(session_id)
        return self._live(session)

    def known(self, session_id: str) -> Session | None:
        """The session as this coordinator last wrote it, without a store read."""
        return self._book.known(session_id)

    async def all(self) -> list[Session]:
        return [self._live(s) for s in await self._store.all()]

    def _located(self, vm: str) -> list[str] | None:
        return self._locate(vm) if self._locate is not None else None

    def in_flight(self) -> list[Session]:
        return self._book.in_flight()

    def on_admission_pass(self, hook: Callable[[float], None]) -> None:
        """`hook(seconds)` after each admission pass decided (for /metrics)."""
        self._scheduler.on_pass(hook)

    def live_in_flight(self) -> list[Session]:
        """In flight, with the source's latest progress (for /metrics)."""
        return [self._live(s) for s in self._book.in_flight()]

    def on_end(self, hook: Callable[[Session], None]) -> None:
        """`hook` is called (on the loop, once per announce) for each session that ends."""
        self._book.on_end(hook)

    def holding(self) -> list[Session]:
        return self._book.holding()

    def arriving(self, host: str) -> list[Session]:
        return self._book.arriving(host)

    async def cancel(self, session_id: str, *, by: str = "") -> Session:
        """`by`: the operator who asked (recorded in the session and its reason)."""
        session, _ = await self._store.get(session_id)
        if session.state.terminal:
            raise FerryError(ErrorCode.CONFLICT, f"session {session_id} has already ended: {session.state}")
        if session.state == S.POSTCOPY:
            raise FerryError(
                ErrorCode.CONFLICT,
                f"session {session_id} is in post-copy: {session.vm} already runs on {session.dest}; it cannot go back",
            )
        reason = f"cancelled on request by {by}" if by else "cancelled on request"
        if session.state in (S.QUEUED, S.PREPARING):
            session = await self._change(
                session_id,
                lambda s: advance(
                    msgspec.structs.replace(s, cancelled_by=by), S.CANCELLED,
                    at=self._clock.wall(), code=SessionCode.CANCELLED, reason=reason,
                )
                if s.state in (S.QUEUED, S.PREPARING)
                else msgspec.structs.replace(s, cancel_requested=True, cancelled_by=by),
            )
            if session.state == S.CANCELLED:
                await self._book.announce(session)
                if not self._driver.running(session.id):
                    await self._book.settle(session)
                return session
        else:
            session = await self._change(
                session_id, lambda s: msgspec.structs.replace(s, cancel_requested=True, cancelled_by=by)
            )
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
        session = await self._change(
            change.id,
            lambda s: msgspec.structs.replace(
                s, options=msgspec.structs.replace(s.options, bandwidth_mib=change.bandwidth_mib),
                updated_at=self._clock.wall(),
            ),
        )
        if self._share.applied(change.id):
            await self._share.rebalance()
        return self._book.current(change.id) or session

    async def force_complete(self, session_id: str, *, by: str = "") -> Session:
        """Post-copy if the session allows it, else pause the guest for the last pass."""
        return self._live(await self._levers.force_complete(session_id, by=by))

    async def set_downtime(self, change: DowntimeChange, *, by: str = "") -> Session:
        return self._live(await self._levers.set_downtime(change, by=by))

    async def _change(self, session_id: str, fn) -> Session:
        try:
            return await self._book.change(session_id, fn)
        except Superseded as exc:
            raise FerryError(ErrorCode.CONFLICT, f"session {session_id} changed meanwhile; try again: {exc}") from None

    # ----- updates from source agents (`ferry.host.*.session.*`) -----

    def on_update(self, subject: str, data: bytes) -> None:
        try:
            update = self._update_decoder.decode(data)
        except FerryError as exc:
            self._log.warning("bad_session_update", subject=subject, reason=exc.message)
            return
        session = self._book.current(update.session_id)
        if not subjects.speaks_for(subject, update.host) or (session is not None and update.host != session.source):
            # Only a session's source reports on it, and only under its own host's subjects.
            self._log.warning("session_update_refused", subject=subject, host=update.host, session_id=update.session_id)
            return
        if isinstance(update, SessionProgress):
            self._driver.on_progress(update.session_id, update.progress)
        elif isinstance(update, SessionSteered):
            if session is not None:
                asyncio.create_task(self._record_action(update), name=f"steered-{update.session_id}")
        else:
            self._driver.on_result(update)

    async def _record_action(self, update: SessionSteered) -> None:
        """A policy action into the session's record; post-copy is a state of its own
        (coordinator/sessions/levers.py records it once, whoever reports it first)."""
        try:
            await self._levers.record(update.session_id, update.action)
        except (Superseded, FerryError) as exc:
            self._log.warning("policy_action_not_recorded", session_id=update.session_id, error=str(exc))

    # ----- the rest of the coordinator -----

    def wake(self) -> None:
        self._scheduler.wake()

    async def rebalance(self) -> int:
        return await self._share.rebalance()

    async def close(self) -> None:
        await self._driver.close()
