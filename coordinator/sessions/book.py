"""The record book: the session records this coordinator works on, every write
to them (a compare-and-set in the record store), the events each change
announces, and the VM claims released when a session ends.

The store is the truth; the book's dicts are what this coordinator last wrote
or read, so admission and placement need no store read per decision.
"""

from collections.abc import Callable

import structlog

from ferry.coordinator.sessions.ports import ClaimStore, Emit, RecordStore
from ferry.coordinator.transitions import advance
from ferry.proto.convergence import PolicyAction
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.events import SessionChanged
from ferry.proto.session import Outcome, Progress, Session, SessionCode, SessionState

S = SessionState

# Finished sessions kept in memory: drains read their outcome, and a completed
# session holds its VM's size on the destination until that host reports the VM.
FINISHED_KEPT = 5000
# A host reports a VM that arrived within a heartbeat or two; beyond this the
# report is the truth.
ARRIVAL_SECONDS = 15.0


class Superseded(Exception):
    """Another writer (a cancel, another coordinator) changed the session first:
    the driver re-reads the record and decides again."""


def unsettled(session: Session) -> bool:
    """Ended without anyone knowing where its VM runs: the claim stays until a
    later reconcile settles it."""
    return session.state == S.FAILED and session.code == SessionCode.NOT_CONFIRMED


class RecordBook:
    def __init__(self, store: RecordStore, claims: ClaimStore, emit: Emit, wall: Callable[[], float]) -> None:
        self._store = store
        self._claims = claims
        self._emit = emit
        self._wall = wall
        self._log = structlog.get_logger().bind(component="sessions")
        # Sessions this coordinator works on (queued or driven), as last written.
        self._active: dict[str, Session] = {}
        self._finished: dict[str, Session] = {}
        # Claims of ended sessions whose release failed (KV away): session id -> VM, tried again.
        self._unreleased: dict[str, str] = {}
        # Told of every session that reaches a terminal state (the leader's /metrics).
        self._on_end: Callable[[Session], None] | None = None

    # ----- reading -----

    def current(self, session_id: str) -> Session | None:
        return self._active.get(session_id)

    def known(self, session_id: str) -> Session | None:
        return self._active.get(session_id) or self._finished.get(session_id)

    def queued(self) -> list[Session]:
        return [s for s in self._active.values() if s.state == S.QUEUED]

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
        """Sessions bringing a VM to `host` (a queued one only hopes to, unless the user named it)."""
        return [s for s in self.holding() if s.dest == host and (s.state != S.QUEUED or s.dest_requested)]

    async def reload(self, session_id: str) -> Session:
        session, _ = await self._store.get(session_id)
        if session_id in self._active:
            self._active[session_id] = session
        return session

    async def stored(self) -> list[Session]:
        return await self._store.all()

    # ----- writing -----

    async def create(self, session: Session) -> None:
        await self._claims.claim(session.vm, session.id)
        try:
            await self._store.create(session)
        except BaseException:
            await self._claims.release(session.vm, session.id)
            raise
        self._active[session.id] = session
        await self.announce(session)

    def hold(self, session: Session) -> None:
        """Work on a session found in the store (adopted after a start or a takeover)."""
        self._active[session.id] = session

    async def change(self, session_id: str, fn: Callable[[Session], Session]) -> Session:
        try:
            session = await self._store.change(session_id, fn)
        except FerryError as exc:
            if exc.code == ErrorCode.CONFLICT:
                raise Superseded(exc.message) from None
            raise
        if session_id in self._active:
            self._active[session_id] = session
        return session

    async def move(self, session_id: str, state: SessionState, **changes) -> Session:
        session = await self.change(session_id, lambda s: advance(s, state, at=self._wall(), **changes))
        await self.announce(session)
        return session

    async def finish(
        self,
        session_id: str,
        state: SessionState,
        code: str,
        reason: str,
        *,
        outcome: Outcome | None = None,
        progress: Progress | None = None,
        steering: list[PolicyAction] | None = None,
        encryption: str | None = None,
    ) -> Session:
        def finish(s: Session) -> Session:
            extra: dict[str, object] = {}
            if encryption:
                # As the source asked libvirt for it, from its result (not the options asked for).
                extra["encryption"] = encryption
            if outcome is not None:
                extra["outcome"] = outcome
            if progress is not None:
                extra["progress"] = progress
            if steering:
                # The source's own list is complete; live updates may have missed one.
                extra["steering"] = list(steering)
            return advance(s, state, at=self._wall(), code=str(code), reason=reason, **extra)

        session = await self.change(session_id, finish)
        await self.announce(session)
        return session

    def on_end(self, hook: Callable[[Session], None]) -> None:
        self._on_end = hook

    async def announce(self, session: Session) -> None:
        if session.state.terminal and self._on_end is not None:
            try:
                self._on_end(session)
            except Exception:
                # Counting an end must never keep it from being announced.
                self._log.exception("session_end_hook_failed", session_id=session.id)
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
                    requested_by=session.requested_by,
                )
            ]
        )

    async def settle(self, session: Session) -> None:
        """Forget a session that has ended, and free its VM for the next move
        (unless nobody knows where the VM runs)."""
        if not session.state.terminal:
            self._active[session.id] = session
            return
        self._active.pop(session.id, None)
        self._finished[session.id] = session
        while len(self._finished) > FINISHED_KEPT:
            self._finished.pop(next(iter(self._finished)))
        if not unsettled(session):
            await self.release(session.vm, session.id)

    async def release(self, vm: str, session_id: str) -> None:
        """Free the VM's claim; if KV cannot be reached now, remember to try again."""
        try:
            await self._claims.release(vm, session_id)
        except Exception as exc:
            self._unreleased[session_id] = vm
            self._log.warning("claim_not_released", session_id=session_id, vm=vm, error=str(exc) or type(exc).__name__)
            return
        self._unreleased.pop(session_id, None)

    async def retry_releases(self) -> None:
        for session_id, vm in list(self._unreleased.items()):
            await self.release(vm, session_id)

    async def release_stale(self, stored: list[Session]) -> int:
        """At adoption: free the claims still held by sessions that ended (their
        release failed, or the coordinator died between the end and the release)."""
        holding = await self._claims.holding_sessions()
        stale = [s for s in stored if s.id in holding and s.state.terminal and not unsettled(s)]
        for session in stale:
            await self.release(session.vm, session.id)
        return len(stale)
