"""The scheduler: admission of queued sessions (coordinator/admission.py
decides), and the slots admitted sessions hold on their source and destination.

Slots are held in memory and changed only between awaits, so the scheduler and
the drivers never both count the same free slot. After a start or a takeover
they are rebuilt from the sessions that run (`take`), before the first pass.
"""

import asyncio
import dataclasses
import time
from collections.abc import Callable

import msgspec
import structlog

from ferry.coordinator import session_steps
from ferry.coordinator.admission import (
    Admit,
    Decision,
    Queued,
    Refuse,
    Slot,
    Wait,
    admit,
    cluster_full,
    cluster_waits,
    inbound_room,
)
from ferry.coordinator.session_rules import FactsCache, host_facts, reported_demand, rules_for
from ferry.coordinator.sessions.book import RecordBook, Superseded
from ferry.coordinator.sessions.ports import Emit, Hosts, LimitsNow
from ferry.proto.api import HostState, HostView
from ferry.proto.events import SessionWaiting
from ferry.proto.session import Session, SessionCode, SessionOrigin, SessionState
from ferry.runtime.wake import woken

S = SessionState

# Without news, admission looks again this often (hosts' reports change capacity).
SCHEDULE_SECONDS = 1.0

StartDriver = Callable[[str, list[str]], None]


class Scheduler:
    def __init__(
        self, book: RecordBook, hosts: Hosts, limits: LimitsNow, emit: Emit, wall: Callable[[], float] = time.time,
        *, facts: FactsCache | None = None,
    ) -> None:
        self._book = book
        self._facts = facts
        self._wall = wall
        self._hosts = hosts
        self._limits = limits
        self._emit = emit
        self._log = structlog.get_logger().bind(component="sessions")
        self._slots: dict[str, Slot] = {}
        self._wake = asyncio.Event()
        # Told how long each pass with sessions queued took to decide.
        self._on_pass: Callable[[float], None] | None = None

    def on_pass(self, hook: Callable[[float], None]) -> None:
        self._on_pass = hook

    # ----- slots -----

    def take(self, session_id: str, source: str, dest: str) -> None:
        self._slots[session_id] = Slot(session_id, source, dest)

    def free(self, session_id: str) -> None:
        if self._slots.pop(session_id, None) is not None:
            self.wake()

    def has_room(self, host: str, ignoring: str) -> bool:
        return inbound_room(self._limits(), list(self._slots.values()), host, ignoring=ignoring)

    # ----- admission -----

    def wake(self) -> None:
        """Look at the queue now: a session ended, a slot or room freed up, a limit changed."""
        self._wake.set()

    async def run(self, start_driver: StartDriver) -> None:
        while True:
            await woken(self._wake, SCHEDULE_SECONDS)
            try:
                await self.schedule(start_driver)
            except Exception:
                self._log.exception("scheduling_failed")

    async def schedule(self, start_driver: StartDriver) -> None:
        started = time.perf_counter()
        queued = [s for s in self._book.queued() if s.id not in self._slots]
        if not queued:
            return
        hosts = {h.host: h for h in self._hosts()}
        alive: list[tuple[Session, HostView]] = []
        now = self._wall()
        for s in queued:
            expired = session_steps.expired(s, now)
            if expired is not None:
                await self._end(s, SessionCode.TIMED_OUT, expired.reason)
                continue
            source = hosts.get(s.source)
            if source is None or source.state == HostState.LOST:
                await self._end(
                    s, SessionCode.SOURCE_UNREACHABLE, f"{s.source} is lost while {s.vm} waited; its VMs cannot be live-migrated"
                )
                continue
            alive.append((s, source))
        limits, slots = self._limits(), list(self._slots.values())
        decisions: list[Decision]
        if cluster_full(limits, slots):
            # Nobody is admitted whatever the hosts say: no placement for a thousand queued sessions.
            decisions = cluster_waits(limits, slots, [s.id for s, _source in alive])
        else:
            waiting = [_queued(s, source) for s, source in alive]
            decisions = admit(limits, waiting, slots, host_facts(hosts.values(), self._book.holding(), self._facts))
        if self._on_pass is not None:
            self._on_pass(time.perf_counter() - started)
        by_id = {s.id: s for s in queued}
        # Take every slot before the first await: nothing else may count them meanwhile.
        for d in decisions:
            if isinstance(d, Admit):
                self.take(d.session_id, by_id[d.session_id].source, d.dest)
        for d in decisions:
            if isinstance(d, Admit):
                await self._admit(d, by_id[d.session_id], start_driver)
            elif isinstance(d, Wait):
                await self._note_waiting(d)
            elif isinstance(d, Refuse):
                await self._end(by_id[d.session_id], SessionCode.NO_DESTINATION, d.reason)

    async def _admit(self, decision: Admit, session: Session, start_driver: StartDriver) -> None:
        try:
            await self._book.move(
                session.id, S.PREPARING, dest=decision.dest,
                candidates_tried=[*session.candidates_tried, decision.dest], waiting="",
            )
        except Superseded:
            await self._book.reload(session.id)
            self.free(session.id)
            return
        start_driver(session.id, decision.alternatives)

    async def _note_waiting(self, decision: Wait) -> None:
        session = self._book.current(decision.session_id)
        if session is None or session.waiting == decision.reason:
            return
        try:
            session = await self._book.change(
                decision.session_id,
                lambda s: msgspec.structs.replace(s, waiting=decision.reason) if s.state == S.QUEUED else s,
            )
        except Superseded:
            return
        await self._emit([SessionWaiting(session_id=session.id, vm=session.vm, reason=decision.reason)])

    async def _end(self, session: Session, code: str, reason: str) -> None:
        try:
            ended = await self._book.finish(session.id, S.FAILED, code, reason)
        except Superseded:
            ended = await self._book.reload(session.id)
        await self._book.settle(ended)


def _queued(s: Session, source: HostView) -> Queued:
    """A queued session as admission sees it: its size as recorded, the rest as its source reports."""
    return Queued(
        session_id=s.id,
        demand=dataclasses.replace(reported_demand(s.vm, source), vcpus=s.demand.vcpus, memory_mib=s.demand.memory_mib),
        created_at=s.created_at,
        priority=s.options.priority,
        evacuation=s.origin == SessionOrigin.EVACUATION,
        dest=s.dest if s.dest_requested else None,
        hint=None if s.dest_requested else s.dest,
        avoid=frozenset([*s.avoid, *s.candidates_tried]),
        rules=rules_for(s),
    )
