"""Which session a cancel request means: one by its id, or a VM's one running session."""

from collections.abc import Iterable

from ferry.proto.api import CancelRequest
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.session import Session


def needs_sessions(request: CancelRequest) -> bool:
    """Whether `session_to_cancel` must see the stored sessions (a bare id needs none)."""
    return request.vm is not None


def session_to_cancel(request: CancelRequest, sessions: Iterable[Session]) -> str:
    """The id of the session to cancel.

    1. neither id nor vm: bad_request;
    2. an id alone: that id, as it is (cancelling an unknown one says not_found);
    3. an id that some session has: that session, whatever `vm` says;
    4. else the VM's session that has not ended: not_found when it has none,
       conflict (naming them) in the unlikely case it has several.
    """
    if request.id is None and request.vm is None:
        raise FerryError(ErrorCode.BAD_REQUEST, "a cancel names a session id or a VM")
    if request.vm is None:
        return request.id  # type: ignore[return-value]  # rule 1 makes it a str
    sessions = list(sessions)
    if request.id is not None and any(s.id == request.id for s in sessions):
        return request.id
    running = [s for s in sessions if s.vm == request.vm and not s.state.terminal]
    if not running:
        no_id = f"no session has the id {request.id}, and " if request.id is not None else ""
        raise FerryError(ErrorCode.NOT_FOUND, f"{no_id}no session is moving a VM called {request.vm} now")
    if len(running) > 1:
        ids = ", ".join(s.id for s in running)
        raise FerryError(ErrorCode.CONFLICT, f"{request.vm} has {len(running)} sessions running ({ids}): cancel one by its id")
    return running[0].id
