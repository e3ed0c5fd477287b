"""An operator's levers on a running migration: `ferry force-complete` and
`ferry downtime`. The source agent decides and acts (agent/steering.py says
post-copy or pause); this asks it, records what it did in the session (its
steering list; post-copy is a state of its own) and announces it.

The same action also arrives as the source's SessionSteered update: recording
is idempotent, so whichever comes second changes nothing.
"""

from collections.abc import Callable

import msgspec

from ferry.coordinator.sessions.book import RecordBook, Superseded
from ferry.coordinator.sessions.ports import AgentPort, Clock, Emit, RecordStore
from ferry.coordinator.transitions import advance
from ferry.proto.agent import DowntimeRequest, ForceCompleteRequest
from ferry.proto.api import DowntimeChange, RefusalCode
from ferry.proto.convergence import ActionKind, PolicyAction
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.events import DowntimeSet, MigrationForced
from ferry.proto.session import Session, SessionState

S = SessionState


def with_action(session: Session, action: PolicyAction, at: float) -> Session:
    """The session with one more steering action (once); a post-copy switch moves a
    migrating session to `postcopy`. Pure."""
    if session.state.terminal or action in session.steering:
        return session
    session = msgspec.structs.replace(session, steering=[*session.steering, action])
    if action.kind == ActionKind.POSTCOPY and session.state == S.MIGRATING:
        session = advance(session, S.POSTCOPY, at=action.at or at, reason=action.reason)
    return session


def refusal(session: Session, what: str) -> FerryError | None:
    """Why `what` cannot act on the session now (None: it is migrating). Pure."""
    if session.state == S.MIGRATING:
        return None
    if session.state == S.POSTCOPY:
        why = f"is in post-copy: {session.vm} already runs on {session.dest}; nothing is left to steer"
    elif session.state.terminal:
        why = f"has already ended ({session.state})"
    else:
        why = f"is {session.state}: its migration has not started yet"
    return FerryError(RefusalCode.NOT_RUNNING, f"session {session.id} {why}; {what} acts only on a running migration")


class Levers:
    def __init__(self, book: RecordBook, store: RecordStore, agents: AgentPort, emit: Emit, clock: Clock) -> None:
        self._book = book
        self._store = store
        self._agents = agents
        self._emit = emit
        self._clock = clock

    async def force_complete(self, session_id: str, *, by: str = "") -> Session:
        session = await self._running(session_id, "force-complete")
        reply = await self._agents.force_complete(
            session.source, ForceCompleteRequest(session_id=session_id, requested_by=by)
        )
        session = await self.record(session_id, reply.action)
        action = reply.action
        await self._emit(
            [MigrationForced(session_id=session_id, vm=session.vm, action=str(action.kind), reason=action.reason, by=by)]
        )
        return session

    async def set_downtime(self, change: DowntimeChange, *, by: str = "") -> Session:
        session = await self._running(change.id, "downtime")
        reply = await self._agents.downtime(
            session.source,
            DowntimeRequest(session_id=change.id, max_downtime_ms=change.max_downtime_ms, requested_by=by),
        )
        # The session's own limit follows: a source that re-reads the options keeps it.
        session = await self.record(
            change.id, reply.action,
            lambda s: msgspec.structs.replace(
                s, options=msgspec.structs.replace(s.options, max_downtime_ms=change.max_downtime_ms)
            ),
        )
        await self._emit([DowntimeSet(session_id=change.id, vm=session.vm, max_downtime_ms=change.max_downtime_ms, by=by)])
        return session

    async def record(
        self, session_id: str, action: PolicyAction, also: Callable[[Session], Session] | None = None
    ) -> Session:
        """The action into the session's record (once), and `also` applied while the
        session runs; announced when it began post-copy."""
        began_postcopy = False

        def change(s: Session) -> Session:
            nonlocal began_postcopy
            updated = with_action(s, action, self._clock.wall())
            began_postcopy = updated.state == S.POSTCOPY and s.state != S.POSTCOPY
            if also is not None and not updated.state.terminal:
                updated = also(updated)
            return updated

        try:
            session = await self._book.change(session_id, change)
        except Superseded as exc:
            raise FerryError(
                ErrorCode.CONFLICT,
                f"the source did it ({action.reason}), but session {session_id} changed meanwhile and does not "
                f"show it yet: {exc}",
            ) from None
        if began_postcopy:
            await self._book.announce(session)
        return session

    async def _running(self, session_id: str, what: str) -> Session:
        session, _ = await self._store.get(session_id)
        refused = refusal(session, what)
        if refused is not None:
            raise refused
        return session
