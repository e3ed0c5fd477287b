"""One page of `ferry sessions`, from the hot bucket and the archive stream. Pure.

The order, newest first: the hot bucket's sessions (running, and finished a
short while ago) by creation time, then the archive from its end backwards (by
stream sequence: the order sessions were archived). A page holds the first
`limit` that match, fewer when its encoded size would pass the cap; a cursor
says where the next (older) page starts:

- `h.<created_at>.<id>`: among the hot sessions, this one and those before it (then the archive);
- `a.<seq>`: in the archive, sequences below `seq`.
"""

import re
from dataclasses import dataclass, field

from ferry.proto.api import SessionsRequest
from ferry.proto.codec import encode
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.session import Session

# NATS refuses messages over max_payload (1 MiB by default): a reply stays well under.
MAX_REPLY_BYTES = 512 * 1024
ENVELOPE_BYTES = 256
# The most archived sessions one request reads, whatever it finds among them.
SCAN_CAP = 5_000

_HOT = re.compile(r"h\.(\d{1,20})\.([a-z0-9]{6,32})\Z")
_ARCHIVE = re.compile(r"a\.(\d{1,20})\Z")


@dataclass(frozen=True)
class Cursor:
    # Hot sessions from this key down are next: (created_at in ms, id); None: all of them.
    hot: tuple[int, str] | None = None
    # Archive sequences below this are next; 0: from the end.
    archive_below: int = 0
    # The hot sessions are done with: only the archive is left.
    archive_only: bool = False


def parse_cursor(text: str) -> Cursor:
    if not text:
        return Cursor()
    if match := _HOT.match(text):
        return Cursor(hot=(int(match[1]), match[2]))
    if match := _ARCHIVE.match(text):
        return Cursor(archive_below=int(match[1]), archive_only=True)
    raise FerryError(ErrorCode.BAD_REQUEST, f"{text!r} is not a page cursor: pass `next_before` of a sessions reply as it is")


def hot_key(session: Session) -> tuple[int, str]:
    return round(session.created_at * 1000), session.id


def hot_cursor(session: Session) -> str:
    millis, sid = hot_key(session)
    return f"h.{millis}.{sid}"


def archive_cursor(below: int) -> str:
    return f"a.{below}"


def matches(session: Session, request: SessionsRequest) -> bool:
    if request.vm is not None and session.vm != request.vm:
        return False
    if not request.include_finished and session.state.terminal:
        return False
    if request.since and session.updated_at < request.since:
        return False
    return True


def hot_in_order(hot: list[Session], request: SessionsRequest, cursor: Cursor) -> list[Session]:
    """The hot sessions this page may take, newest first."""
    if cursor.archive_only:
        return []
    chosen = sorted((s for s in hot if matches(s, request)), key=hot_key, reverse=True)
    if cursor.hot is not None:
        chosen = [s for s in chosen if hot_key(s) <= cursor.hot]
    return chosen


@dataclass
class SessionPage:
    """The page being filled, newest first."""

    limit: int
    max_bytes: int = MAX_REPLY_BYTES
    newest_first: list[Session] = field(default_factory=list)
    size: int = ENVELOPE_BYTES
    # Where the next page starts, once this one is full ("" while it is not).
    next_before: str = ""
    seen: set[str] = field(default_factory=set)

    @property
    def full(self) -> bool:
        return bool(self.next_before)

    def offer(self, session: Session, resume_at: str) -> bool:
        """Take `session` if it fits; else the page is full and the next one starts
        at `resume_at` (a cursor that includes this session). A session already
        taken (archived twice, or still in the hot bucket too) is skipped."""
        if self.full:
            return False
        if session.id in self.seen:
            return True
        cost = len(encode(session)) + 1
        # One session always fits (a record is smaller than max_payload, as KV stored it).
        if len(self.newest_first) >= self.limit or (self.newest_first and self.size + cost > self.max_bytes):
            self.next_before = resume_at
            return False
        self.newest_first.append(session)
        self.seen.add(session.id)
        self.size += cost
        return True

    def sessions(self) -> list[Session]:
        """Oldest first, as tables show them (the latest at the bottom)."""
        return self.newest_first[::-1]


def archived_stop(stored_at: float, request: SessionsRequest) -> bool:
    """A session archived before `since` ended before it too: nothing older can match."""
    return bool(request.since) and stored_at < request.since
