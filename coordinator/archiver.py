"""The leader's archiver: sessions that ended more than `history.keep_finished`
ago leave the hot bucket for the archive stream, so listing the bucket stays
cheap however many sessions ever ran.

Rules (`due`, pure), in order:
1. a session that has not ended stays;
2. a session that ended not knowing where its VM runs (`failed`/`not_confirmed`) stays:
   the leader settles it later, and its VM stays claimed until then;
3. a session a VM claim still names stays, whatever its state;
4. a session that ended less than `keep_finished` ago stays;
5. the rest go, the longest ended first, at most `at_most` in one pass.

Each goes in two steps: a copy into the archive, then a delete from the bucket
only if the record is still at the revision copied (a session changed
meanwhile stays, and is looked at again next pass). A leader that dies between
the two leaves a copy and the record: the next pass copies it again (JetStream
drops the repeat, see SessionArchive.put) and deletes it.
"""

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from ferry.coordinator.config import HistorySettings
from ferry.coordinator.session_archive import SessionArchive
from ferry.coordinator.session_store import SessionStore
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.session import Session, SessionCode, SessionState

# Sessions archived in one pass (the next pass takes the rest).
AT_MOST = 500


def due(
    entries: list[tuple[Session, int]], holding: set[str], now: float, keep_finished: float, at_most: int = AT_MOST
) -> list[tuple[Session, int]]:
    """Which sessions (with the revision read) leave the hot bucket now; see the module's rules."""
    chosen = [
        (session, revision)
        for session, revision in entries
        if session.state.terminal
        and not (session.state == SessionState.FAILED and session.code == SessionCode.NOT_CONFIRMED)
        and session.id not in holding
        and now - session.updated_at > keep_finished
    ]
    chosen.sort(key=lambda entry: (entry[0].updated_at, entry[0].id))
    return chosen[:at_most]


class Archiver:
    def __init__(
        self,
        store: SessionStore,
        archive: SessionArchive,
        holding: Callable[[], Awaitable[set[str]]],
        settings: HistorySettings,
        *,
        wall: Callable[[], float],
    ) -> None:
        self._store = store
        self._archive = archive
        self._holding = holding
        self._settings = settings
        self._wall = wall
        self._log = structlog.get_logger().bind(component="archiver")

    async def run(self) -> None:
        while True:
            archived = 0
            try:
                archived = await self.archive_once()
                if archived:
                    self._log.info("sessions_archived", count=archived)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # NATS away, or a stream being moved: the next pass tries again.
                self._log.warning("archive_pass_failed", error=str(exc) or type(exc).__name__)
            # A backlog (the first start after an upgrade) goes on at once, a pass at a time.
            await asyncio.sleep(self._settings.archive_every if archived < AT_MOST else 0)

    async def archive_once(self) -> int:
        # Claims are read after the sessions: a claim taken meanwhile by a new session names that one, not these.
        entries = await self._store.entries()
        holding = await self._holding()
        archived = 0
        for session, revision in due(entries, holding, self._wall(), self._settings.keep_finished):
            await self._archive.put(session, revision)
            try:
                await self._store.remove_if(session.id, revision)
            except FerryError as exc:
                if exc.code != ErrorCode.CONFLICT:
                    raise
                self._log.info("session_changed_while_archived", session_id=session.id)
                continue
            archived += 1
        return archived
