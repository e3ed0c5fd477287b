"""Finished sessions in the archive stream (`FERRY_SESSIONS`, one subject per
session): written by the leader's archiver, read by `ferry session ID` (the last
message on the session's subject) and `ferry sessions` (from the end backwards),
and the page assembly that reads the hot bucket and, only as far as needed,
the archive."""

from collections.abc import AsyncIterator
from contextlib import aclosing

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from ferry.coordinator.session_pages import (
    SCAN_CAP,
    SessionPage,
    archive_cursor,
    archived_stop,
    hot_cursor,
    hot_in_order,
    matches,
    parse_cursor,
)
from ferry.coordinator.stream_reader import Stored, last_in_stream, reading
from ferry.proto.api import SessionsReply, SessionsRequest
from ferry.proto.codec import Decoder, encode
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.history import ARCHIVE_STREAM, ARCHIVE_SUBJECTS, archive_subject
from ferry.proto.session import Session

# Archived sessions read per step backwards: a page of 50 usually needs one.
CHUNK = 128


class SessionArchive:
    def __init__(self, js: JetStreamContext, *, scan_cap: int = SCAN_CAP) -> None:
        self._js = js
        self._scan_cap = scan_cap
        self._decoder = Decoder(Session, "archived session")

    async def put(self, session: Session, revision: int) -> None:
        """Archive the session as read at `revision`. The same copy sent twice (a
        leader that died before deleting it from the hot bucket, and its
        successor) is stored once: JetStream drops a repeated `Nats-Msg-Id`."""
        await self._js.publish(
            archive_subject(session.id), encode(session), stream=ARCHIVE_STREAM,
            headers={"Nats-Msg-Id": f"{session.id}.{revision}"},
        )

    async def find(self, session_id: str) -> Session | None:
        try:
            raw = await self._js.get_msg(ARCHIVE_STREAM, subject=archive_subject(session_id), direct=True)
        except nats.js.errors.NotFoundError:
            return None
        return self._decoder.decode(raw.data or b"")

    async def newest_first(self, below: int) -> AsyncIterator[Stored]:
        """Archived sessions from sequence `below` - 1 (0: the end) backwards, at most the scan cap."""
        first, last = await last_in_stream(self._js, ARCHIVE_STREAM)
        if not last:
            return
        end = min(below - 1, last) if below else last
        scanned = 0
        while end >= first and scanned < self._scan_cap:
            start = max(first, end - CHUNK + 1, end - (self._scan_cap - scanned) + 1)
            async with reading(self._js, ARCHIVE_STREAM, filter_subjects=[ARCHIVE_SUBJECTS], start_seq=start) as reader:
                chunk = [m for m in await reader.batch(end - start + 1) if m.seq <= end]
            for message in reversed(chunk):
                yield message
            scanned += end - start + 1
            end = start - 1

    def decode(self, data: bytes) -> Session | None:
        try:
            return self._decoder.decode(data)
        except FerryError:
            return None

    async def page(self, hot: list[Session], request: SessionsRequest) -> SessionsReply:
        """The page `request` asks for: hot sessions first, then the archive backwards."""
        cursor = parse_cursor(request.before)
        page = SessionPage(limit=request.limit)
        for session in hot_in_order(hot, request, cursor):
            if not page.offer(session, hot_cursor(session)):
                break
        if page.full or not request.include_finished:
            return _reply(page, more=page.full)
        page.seen |= {s.id for s in hot}  # a session archived but not yet deleted shows once, from the hot bucket
        lowest = 0
        try:
            async with aclosing(self.newest_first(cursor.archive_below)) as archived:
                async for message in archived:
                    lowest = message.seq
                    if archived_stop(message.at, request):
                        return _reply(page, more=False)
                    session = self.decode(message.data)
                    if session is None or not matches(session, request):
                        continue
                    if not page.offer(session, archive_cursor(message.seq + 1)):
                        return _reply(page, more=True)
        except (nats.js.errors.Error, nats.errors.Error) as exc:
            raise FerryError(ErrorCode.UNAVAILABLE, f"the session archive could not be read: {_said(exc)}") from None
        first, _last = await last_in_stream(self._js, ARCHIVE_STREAM)
        if lowest and lowest > first:
            # The scan cap ended the read: the rest is older than the lowest read.
            page.next_before = archive_cursor(lowest)
            return _reply(page, more=True)
        return _reply(page, more=False)


def _reply(page: SessionPage, *, more: bool) -> SessionsReply:
    return SessionsReply(sessions=page.sessions(), more=more, next_before=page.next_before if more else "")


def _said(exc: Exception) -> str:
    return getattr(exc, "description", None) or str(exc) or type(exc).__name__

