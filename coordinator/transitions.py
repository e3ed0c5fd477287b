"""The session state machine. Pure: a session and a wish in, a new session or a refusal out."""

import msgspec

from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.session import Session, SessionCode, SessionState, Transition

S = SessionState

ALLOWED: dict[SessionState, frozenset[SessionState]] = {
    S.QUEUED: frozenset({S.PREPARING, S.FAILED, S.CANCELLED}),
    # PREPARING -> PREPARING: the next candidate after a decline.
    S.PREPARING: frozenset({S.PREPARING, S.MIGRATING, S.FAILED, S.CANCELLED}),
    S.MIGRATING: frozenset({S.POSTCOPY, S.COMPLETED, S.FAILED, S.CANCELLED}),
    # Once in post-copy the guest runs on the destination while pages still come
    # from the source: there is no going back, so no cancel.
    S.POSTCOPY: frozenset({S.COMPLETED, S.FAILED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}


# A session that ended `not_confirmed` (nobody could tell where its VM ran) is
# settled later, once a host can: to `completed`, or `failed` with the real reason.
SETTLED_FROM_UNCONFIRMED = frozenset({S.COMPLETED, S.FAILED})


def can_move(current: SessionState, target: SessionState) -> bool:
    return target in ALLOWED[current]


def advance(session: Session, target: SessionState, *, at: float, code: str = "", reason: str = "", **changes) -> Session:
    settling = session.state == S.FAILED and session.code == SessionCode.NOT_CONFIRMED and target in SETTLED_FROM_UNCONFIRMED
    if not settling and not can_move(session.state, target):
        raise FerryError(
            ErrorCode.CONFLICT,
            f"session {session.id} is {session.state}; it cannot become {target}",
        )
    return msgspec.structs.replace(
        session,
        state=target,
        updated_at=at,
        code=code if target.terminal else session.code,
        reason=reason if target.terminal else session.reason,
        history=[*session.history, Transition(at=at, state=target, code=code, reason=reason)],
        **changes,
    )
