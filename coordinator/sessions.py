"""Migration sessions: start, admit, drive, watch, cancel.

A new session waits in `queued` until admission (coordinator/admission.py)
gives it a slot under the limits and a destination. Then one task drives it
through prepare (destination), migrate (source) and commit or rollback. Every
state change is a compare-and-set in JetStream KV, so a cancel and a completion
racing each other have exactly one winner; the driver re-reads and follows
whatever won.

Slots are held in memory and changed only between awaits, so the scheduler and
the drivers never both count the same free slot.
"""

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable

import msgspec
import structlog

from ferry.coordinator import bandwidth
from ferry.coordinator.admission import Admit, Queued, Refuse, Slot, Wait, admit, inbound_room
from ferry.coordinator.agents import AgentClient
from ferry.coordinator.placement import rank
from ferry.coordinator.session_rules import (
    check_named_dest,
    check_policy,
    find_source,
    fresh_rate,
    host_facts,
    prediction_for,
    reported_demand,
    rules_for,
)
from ferry.coordinator.session_store import SessionStore, VmClaims
from ferry.coordinator.transitions import advance
from ferry.proto import subjects
from ferry.proto.agent import (
    BandwidthRequest,
    Decline,
    DirtyRate,
    MeasureRequest,
    Offer,
    PrepareRequest,
    SessionProgress,
    SessionRef,
    SessionResult,
    SessionSteered,
    SessionUpdate,
    VmDescription,
)
from ferry.proto.agent import (
    MigrateRequest as AgentMigrateRequest,
)
from ferry.proto.api import BandwidthChange, HostState, HostView, MigrateRequest, PlanReply
from ferry.proto.codec import Decoder
from ferry.proto.convergence import ActionKind, PolicyAction
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.events import (
    BandwidthShared,
    CoordinatorEvent,
    SessionChanged,
    SessionWaiting,
)
from ferry.proto.limits import Limits
from ferry.proto.session import (
    Demand,
    Outcome,
    Progress,
    Session,
    SessionCode,
    SessionOrigin,
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
# Without news, admission looks again this often (hosts' reports change capacity).
SCHEDULE_SECONDS = 1.0
# Finished sessions kept in memory: drains read their outcome, and a completed
# session holds its VM's size on the destination until that host reports the VM.
FINISHED_KEPT = 5000
# A host reports a VM that arrived within a heartbeat or two; beyond this the
# report is the truth.
ARRIVAL_SECONDS = 15.0
# How long a session waits for the guest's dirty-rate measurement (it takes about 1 s).
MEASURE_WAIT_SECONDS = 3.0


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
        limits: Callable[[], Limits] = Limits,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._claims = claims
        self._agents = agents
        self._hosts = hosts
        self._emit = emit
        self._limits = limits
        self._wall = wall
        self._monotonic = monotonic
        self._log = structlog.get_logger().bind(component="sessions")
        self._update_decoder = Decoder(SessionUpdate, "session update")  # type: ignore[arg-type]
        # Sessions this coordinator holds (queued or driven), as last written.
        self._active: dict[str, Session] = {}
        self._finished: dict[str, Session] = {}
        self._slots: dict[str, Slot] = {}
        # MiB/s each migrating session's source was last told.
        self._applied: dict[str, int] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._results: dict[str, asyncio.Future[SessionResult]] = {}
        self._progress: dict[str, Progress] = {}
        self._wake = asyncio.Event()
        self._bandwidth_lock = asyncio.Lock()

    # ----- API -----

    async def start(
        self,
        request: MigrateRequest,
        *,
        origin: SessionOrigin = SessionOrigin.USER,
        drain_host: str | None = None,
        hint: str | None = None,
        avoid: list[str] | None = None,
    ) -> Session:
        """Queue a session. `hint`: a destination preferred if it can take the VM
        (a drain's plan); `avoid`: hosts not to use."""
        check_policy(request.options)
        hosts = self._hosts()
        source = find_source(request.vm, request.source, hosts)
        if request.dest is not None:
            check_named_dest(request.dest, source.host, hosts)
        demand = reported_demand(request.vm, source)
        now = self._wall()
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
            avoid=list(avoid or []),
        )
        await self._claims.claim(session.vm, session.id)
        try:
            await self._store.create(session)
        except BaseException:
            await self._claims.release(session.vm, session.id)
            raise
        self._active[session.id] = session
        await self._announce(session)
        self.wake()
        return session

    async def plan(self, request: MigrateRequest) -> PlanReply:
        """A dry run: the checks of `start`, the destination placement would pick,
        and a prediction from the guest's dirty rate measured now. Nothing changes."""
        check_policy(request.options)
        hosts = self._hosts()
        source = find_source(request.vm, request.source, hosts)
        draft = Session(
            id="dryrun", vm=request.vm, source=source.host, options=request.options, state=S.QUEUED,
            created_at=0.0, updated_at=0.0,
        )
        if request.dest is not None:
            check_named_dest(request.dest, source.host, hosts)
            candidates, rejections = [request.dest], []
        else:
            ranking = rank(reported_demand(request.vm, source), host_facts(hosts, self.holding()), rules_for(draft))
            candidates = [name for name, _score in ranking.choices]
            rejections = [f"{r.host}: {r.reason}" for r in ranking.rejections if r.code != "same_host"]
        vm = await self._agents.describe(source.host, request.vm)
        note, prediction = "", None
        try:
            rate = await self._agents.measure(source.host, MeasureRequest(vm=request.vm))
        except FerryError as exc:
            note = f"no prediction: {exc.message}"
        else:
            prediction = prediction_for(draft, vm, rate, request.options.bandwidth_mib)
        return PlanReply(
            vm=request.vm,
            source=source.host,
            dest=candidates[0] if candidates else None,
            candidates=candidates,
            rejections=rejections,
            policy=request.options.policy,
            prediction=prediction,
            note=note,
        )

    async def get(self, session_id: str) -> Session:
        session, _ = await self._store.get(session_id)
        live = self._progress.get(session_id)
        if live is not None and not session.state.terminal:
            session = msgspec.structs.replace(session, progress=live)
        return session

    def known(self, session_id: str) -> Session | None:
        """The session as this coordinator last wrote it, without a KV read."""
        return self._active.get(session_id) or self._finished.get(session_id)

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

    def holding(self) -> list[Session]:
        """Sessions that hold room on their destination: in flight, or completed
        so recently that the host may not report the VM yet. (An older completed
        session must not: its VM may have moved on since.)"""
        since = self._wall() - ARRIVAL_SECONDS
        recent = [s for s in self._finished.values() if s.state == S.COMPLETED and s.updated_at >= since]
        return [*self.in_flight(), *recent]

    def arriving(self, host: str) -> list[Session]:
        """Sessions bringing a VM to `host`."""
        return [s for s in self.holding() if s.dest == host]

    async def adopt_queued(self) -> int:
        """After a restart: queued sessions have done nothing yet, so this
        coordinator can simply take them over."""
        adopted = 0
        for session in await self._store.all():
            if session.state == S.QUEUED and session.id not in self._active:
                self._active[session.id] = session
                adopted += 1
            elif not session.state.terminal and session.id not in self._active:
                self._log.warning(
                    "session_not_resumed", session_id=session.id, vm=session.vm, state=str(session.state),
                    reason="it was started by a coordinator that stopped; check the VM and cancel it",
                )
        if adopted:
            self.wake()
        return adopted

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
                await self._settle(session)
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
        session = await self._change(
            change.id,
            lambda s: msgspec.structs.replace(
                s, options=msgspec.structs.replace(s.options, bandwidth_mib=change.bandwidth_mib), updated_at=self._wall()
            ),
        )
        if change.id in self._applied:
            await self.rebalance()
        return self._active.get(change.id, session)

    # ----- updates from source agents (`ferry.host.*.session.*`) -----

    def on_update(self, subject: str, data: bytes) -> None:
        try:
            update = self._update_decoder.decode(data)
        except FerryError as exc:
            self._log.warning("bad_session_update", subject=subject, reason=exc.message)
            return
        session = self._active.get(update.session_id)
        if not subjects.speaks_for(subject, update.host) or (session is not None and update.host != session.source):
            # Only a session's source reports on it, and only under its own host's subjects.
            self._log.warning("session_update_refused", subject=subject, host=update.host, session_id=update.session_id)
            return
        if isinstance(update, SessionProgress):
            self._progress[update.session_id] = update.progress
            return
        if isinstance(update, SessionSteered):
            if update.session_id in self._active:
                asyncio.create_task(self._record_action(update), name=f"steered-{update.session_id}")
            return
        waiter = self._results.get(update.session_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(update)

    async def _record_action(self, update: SessionSteered) -> None:
        """A policy action into the session's record; post-copy is a state of its own."""
        action = update.action

        def record(s: Session) -> Session:
            if s.state.terminal or action in s.steering:
                return s
            s = msgspec.structs.replace(s, steering=[*s.steering, action])
            if action.kind == ActionKind.POSTCOPY and s.state == S.MIGRATING:
                s = advance(s, S.POSTCOPY, at=action.at or self._wall(), reason=action.reason)
            return s

        try:
            session = await self._change(update.session_id, record)
        except (Superseded, FerryError) as exc:
            self._log.warning("policy_action_not_recorded", session_id=update.session_id, error=str(exc))
            return
        if session.state == S.POSTCOPY and action.kind == ActionKind.POSTCOPY:
            await self._announce(session)

    # ----- admission -----

    def wake(self) -> None:
        self._wake.set()

    async def run_scheduler(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=SCHEDULE_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._schedule()
            except Exception:
                self._log.exception("scheduling_failed")

    async def _schedule(self) -> None:
        queued = [s for s in self._active.values() if s.state == S.QUEUED and s.id not in self._slots]
        if not queued:
            return
        hosts = {h.host: h for h in self._hosts()}
        waiting: list[Queued] = []
        for s in queued:
            source = hosts.get(s.source)
            if source is None or source.state == HostState.LOST:
                await self._finish(
                    s.id, S.FAILED, SessionCode.SOURCE_UNREACHABLE,
                    f"{s.source} is lost while {s.vm} waited; its VMs cannot be live-migrated",
                )
                continue
            waiting.append(
                Queued(
                    session_id=s.id,
                    demand=dataclasses.replace(
                        reported_demand(s.vm, source), vcpus=s.demand.vcpus, memory_mib=s.demand.memory_mib
                    ),
                    created_at=s.created_at,
                    priority=s.options.priority,
                    evacuation=s.origin == SessionOrigin.EVACUATION,
                    dest=s.dest if s.dest_requested else None,
                    hint=None if s.dest_requested else s.dest,
                    avoid=frozenset([*s.avoid, *s.candidates_tried]),
                    rules=rules_for(s),
                )
            )
        decisions = admit(self._limits(), waiting, list(self._slots.values()), host_facts(hosts.values(), self.holding()))
        # Take every slot before the first await: nothing else may count them meanwhile.
        for d in decisions:
            if isinstance(d, Admit):
                self._slots[d.session_id] = Slot(d.session_id, self._active[d.session_id].source, d.dest)
        for d in decisions:
            if isinstance(d, Admit):
                await self._admit(d)
            elif isinstance(d, Wait):
                await self._note_waiting(d)
            elif isinstance(d, Refuse):
                await self._finish(d.session_id, S.FAILED, SessionCode.NO_DESTINATION, d.reason)

    async def _admit(self, decision: Admit) -> None:
        sid = decision.session_id
        try:
            await self._move(
                sid, S.PREPARING, dest=decision.dest,
                candidates_tried=[*self._active[sid].candidates_tried, decision.dest], waiting="",
            )
        except Superseded:
            self._slots.pop(sid, None)
            self.wake()
            return
        self._tasks[sid] = asyncio.create_task(self._drive(sid, decision.alternatives), name=f"session-{sid}")

    async def _note_waiting(self, decision: Wait) -> None:
        session = self._active.get(decision.session_id)
        if session is None or session.waiting == decision.reason:
            return
        try:
            session = await self._change(
                decision.session_id,
                lambda s: msgspec.structs.replace(s, waiting=decision.reason) if s.state == S.QUEUED else s,
            )
        except Superseded:
            return
        await self._emit([SessionWaiting(session_id=session.id, vm=session.vm, reason=decision.reason)])

    async def rebalance(self, starting: str | None = None) -> int:
        """Share each host's bandwidth budget between the running migrations (see
        coordinator/bandwidth.py) and tell the sources whose share changed. With
        `starting`, that session joins and its share is returned for its migrate request."""
        async with self._bandwidth_lock:
            moving = [
                s for s in self._active.values()
                if s.id in self._applied or s.id == starting
                if s.state in (S.PREPARING, S.MIGRATING, S.POSTCOPY) and s.dest is not None
            ]
            limits = self._limits()
            shares = bandwidth.split(
                limits.host_bandwidth_mib,
                [bandwidth.Flow(s.id, s.source, s.dest, s.options.bandwidth_mib) for s in moving if s.dest],
            )
            # Lower shares first, so a host never runs above its budget while shares move.
            for sid, share in sorted(shares.items(), key=lambda kv: kv[1] - self._applied.get(kv[0], 0)):
                if sid == starting or self._applied.get(sid) == share:
                    continue
                session = self._active[sid]
                try:
                    await self._agents.bandwidth(session.source, BandwidthRequest(session_id=sid, bandwidth_mib=share))
                except FerryError as exc:
                    self._log.warning("bandwidth_not_changed", session_id=sid, error=exc.message)
                    continue
                self._applied[sid] = share
                reason = (
                    f"{len(moving)} migrations share a budget of {limits.host_bandwidth_mib} MiB/s per host"
                    if limits.host_bandwidth_mib
                    else "the session's own limit"
                )
                try:
                    await self._change(sid, lambda s, share=share: msgspec.structs.replace(s, bandwidth_applied_mib=share))
                except Superseded:
                    pass
                await self._emit([BandwidthShared(session_id=sid, vm=session.vm, bandwidth_mib=share, reason=reason)])
            if starting is None:
                return 0
            self._applied[starting] = shares.get(starting, 0)
            return self._applied[starting]

    def _draining(self, host: str) -> bool:
        return any(h.host == host and h.draining for h in self._hosts())

    # ----- the driver -----

    async def _drive(self, session_id: str, alternatives: list[str]) -> None:
        log = self._log.bind(session_id=session_id)
        try:
            await self._run(session_id, alternatives, log)
        except Superseded:
            log.info("session_superseded")
        except Exception as exc:
            log.exception("session_driver_crashed")
            await self._finish(session_id, S.FAILED, SessionCode.INTERNAL, f"the coordinator failed while driving the session: {exc}")
        finally:
            self._tasks.pop(session_id, None)
            self._results.pop(session_id, None)
            self._progress.pop(session_id, None)
            self._slots.pop(session_id, None)
            was_moving = self._applied.pop(session_id, None) is not None
            try:
                current, _ = await self._store.get(session_id)
                await self._settle(current)
            except Exception:
                log.exception("claim_release_failed")
            self.wake()
            if was_moving:
                try:
                    await self.rebalance()
                except Exception:
                    log.exception("rebalance_failed")

    async def _settle(self, session: Session) -> None:
        """Forget a session that has ended (or that waits again, unclaimed by a driver)."""
        if session.state == S.QUEUED:
            self._active[session.id] = session
            return
        if not session.state.terminal or session.id in self._tasks:
            return
        self._active.pop(session.id, None)
        self._finished[session.id] = session
        while len(self._finished) > FINISHED_KEPT:
            self._finished.pop(next(iter(self._finished)))
        await self._claims.release(session.vm, session.id)

    async def _run(self, session_id: str, alternatives: list[str], log) -> None:
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
        session = await self._change(
            session_id, lambda s: msgspec.structs.replace(s, demand=Demand(vcpus=vm.vcpus, memory_mib=vm.memory_mib))
        )
        # A guest never measured (or long ago) is measured while the destination prepares.
        measuring = None if fresh_rate(vm, self._wall()) else asyncio.create_task(self._measure(session.source, vm.name, log))
        try:
            found = await self._find_destination(session, vm, alternatives, log)
            if found is None:
                return
            rate = None
            if measuring is not None:
                # A prediction is advice: a slow measurement does not hold the move up.
                done, _ = await asyncio.wait({measuring}, timeout=MEASURE_WAIT_SECONDS)
                rate = measuring.result() if done else None
        finally:
            if measuring is not None and not measuring.done():
                measuring.cancel()
        offer, prepared = found
        log = log.bind(dest=offer.host)
        share = await self.rebalance(starting=session_id)
        prediction = prediction_for(session, vm, rate, share)
        try:
            session = await self._move(
                session_id, S.MIGRATING, copy_disks=list(offer.copy_disks), bandwidth_applied_mib=share,
                prediction=prediction,
            )
        except Superseded:
            await self._rollback(offer.host, session, log)
            raise
        result = await self._migrate(session, offer, prepared, share, log)
        if result is None:
            return
        if result.ok:
            await self._commit(session, result, log)
        else:
            await self._rollback(offer.host, session, log)
            if result.aborted:
                await self._finish(
                    session_id, S.CANCELLED, SessionCode.CANCELLED, result.reason,
                    progress=result.last_progress, steering=result.actions,
                )
            else:
                await self._finish(
                    session_id, S.FAILED, result.code or SessionCode.MIGRATION_FAILED, result.reason,
                    progress=result.last_progress, steering=result.actions,
                )

    async def _measure(self, host: str, vm: str, log) -> DirtyRate | None:
        try:
            return await self._agents.measure(host, MeasureRequest(vm=vm))
        except FerryError as exc:
            # A prediction is advice: the migration goes ahead without one.
            log.info("dirty_rate_not_measured", error=exc.message)
            return None

    async def _find_destination(
        self, session: Session, vm: VmDescription, alternatives: list[str], log
    ) -> tuple[Offer, PrepareRequest] | None:
        """Prepare the admitted destination; on a decline, the next alternative
        that still has an inbound slot, or back to the queue if they are all busy."""
        source_view = next((h for h in self._hosts() if h.host == session.source), None)
        if source_view is None:
            await self._finish(session.id, S.FAILED, SessionCode.SOURCE_UNREACHABLE, f"{session.source} no longer reports")
            return None
        assert session.dest is not None
        host = session.dest
        remaining = list(alternatives)
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
            if isinstance(reply, Offer) and self._draining(host) and not session.dest_requested:
                # The host began draining after admission: do not bring it a VM it must send away again.
                await self._rollback(host, session, log)
                reply = Decline(
                    session_id=session.id, host=host, code="host_draining",
                    reason=f"{host} began draining; no new VMs are placed there",
                )
            if isinstance(reply, Offer):
                log.info("destination_offered", dest=host, copy_disks=reply.copy_disks)
                return reply, request
            log.info("destination_declined", dest=host, code=reply.code, reason=reply.reason)
            declines.append(f"{host}: {reply.reason}")
            if session.dest_requested:
                await self._finish(session.id, S.FAILED, reply.code, f"{host} declined: {reply.reason}")
                return None
            why = f"{host} declined: {reply.reason}"
            limits = self._limits()
            slots = list(self._slots.values())
            with_room = [h for h in remaining if inbound_room(limits, slots, h, ignoring=session.id)]
            if not with_room:
                if remaining:
                    # Hosts that could take it are all receiving their limit: wait for one.
                    self._slots.pop(session.id, None)
                    await self._change(
                        session.id,
                        lambda s, why=why, code=reply.code: advance(s, S.QUEUED, at=self._wall(), code=code, reason=why, dest=None),
                    )
                    return None
                await self._finish(
                    session.id, S.FAILED, SessionCode.NO_DESTINATION,
                    f"every candidate declined {vm.name}: {'; '.join(declines)}",
                )
                return None
            host = with_room[0]
            remaining.remove(host)
            # Move the slot before the first await: the scheduler must count it there.
            self._slots[session.id] = Slot(session.id, session.source, host)
            session = await self._change(
                session.id,
                lambda s, host=host, why=why, code=reply.code: advance(
                    s, S.PREPARING, at=self._wall(), code=code, reason=why,
                    dest=host, candidates_tried=[*s.candidates_tried, host],
                ),
            )

    async def _migrate(
        self, session: Session, offer: Offer, prepared: PrepareRequest, bandwidth_mib: int, log
    ) -> SessionResult | None:
        waiter: asyncio.Future[SessionResult] = asyncio.get_running_loop().create_future()
        self._results[session.id] = waiter
        request = AgentMigrateRequest(
            session_id=session.id,
            vm=session.vm,
            dest=offer.host,
            peer_uri=offer.peer_uri,
            migration_address=offer.migration_address,
            options=msgspec.structs.replace(session.options, bandwidth_mib=bandwidth_mib),
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
        await self._finish(
            session.id, S.COMPLETED, "", "", outcome=outcome, progress=result.last_progress, steering=result.actions
        )

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
        steering: list[PolicyAction] | None = None,
    ) -> None:
        def finish(s: Session) -> Session:
            extra = {}
            if outcome is not None:
                extra["outcome"] = outcome
            if progress is not None:
                extra["progress"] = progress
            if steering:
                # The source's own list is complete; live updates may have missed one.
                extra["steering"] = list(steering)
            return advance(s, state, at=self._wall(), code=str(code), reason=reason, **extra)

        try:
            session = await self._change(session_id, finish)
        except Superseded:
            return
        await self._announce(session)
        await self._settle(session)

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
