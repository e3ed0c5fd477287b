"""What an agent remembers of its sessions across a restart: one JSON file per
session, `<state_dir>/sessions/<session_id>.json`.

libvirt runs a peer-to-peer migration inside libvirtd, not inside the agent:
an agent killed mid-migration comes back to a job that went on, or ended,
without it. The journal tells the restarted agent which jobs were its own
(so a repeated `migrate` never starts a second one), what a destination
reserved and which images it made (so a rollback removes those and nothing
else).

Every write replaces the whole file atomically (temp file, fsync, rename,
fsync of the folder) in a thread: a crash leaves the old entry or the new one,
never half of one, and the event loop never waits on the disk.
"""

import asyncio
import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec
import structlog

from ferry.proto.agent import JobRole, MigrateRequest, Offer, SessionResult, VmDescription

SESSIONS_FOLDER = "sessions"
SUFFIX = ".json"
# An entry that cannot be read is kept under this suffix for a person to look at.
BAD_SUFFIX = ".bad"
TEMP_SUFFIX = ".tmp"
# The proto's session ids are narrower still; this is what may ever become a file name.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


class JournalEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One session as this agent took part in it. A source fills the first
    group of fields, a destination the second."""

    session_id: str
    vm: str
    role: JobRole
    updated_at: float = 0.0
    # Source: the request as taken, the domain paths of the local disks it copies
    # away (removed on commit), when it was journaled (wall time), and how it ended.
    request: MigrateRequest | None = None
    copied_paths: list[str] = []
    started_at: float = 0.0
    abort_requested: bool = False
    result: SessionResult | None = None
    # Destination: what was reserved for whom. `offer` stays None until prepare
    # has made everything it offers: no offer can have left the host before.
    description: VmDescription | None = None
    offer: Offer | None = None
    created_disks: list[str] = []


def is_stale(entry: JournalEntry, now: float, keep_seconds: float) -> bool:
    """A source entry whose result is older than `keep_seconds`: nobody will ask for it again."""
    return entry.role == JobRole.SOURCE and entry.result is not None and now - entry.result.at > keep_seconds


class Journal:
    def __init__(self, state_dir: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self._dir = Path(state_dir) / SESSIONS_FOLDER
        self._clock = clock
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(JournalEntry)
        # Callers build an entry from their state and write it without awaiting in
        # between; the lock is FIFO, so entries land in the order they were built
        # (an older snapshot never overwrites a newer one of the same session).
        self._lock = asyncio.Lock()
        self._log = structlog.get_logger().bind(journal=str(self._dir))

    @property
    def folder(self) -> Path:
        return self._dir

    def path(self, session_id: str) -> Path:
        """The entry's file. Raises ValueError for an id that is no safe file name."""
        if not isinstance(session_id, str) or not _SAFE_ID.match(session_id):
            raise ValueError(f"{session_id!r} is not a session id the journal can name a file after")
        return self._dir / f"{session_id}{SUFFIX}"

    async def open(self) -> None:
        """Creates the folders (owner only: entries name VMs, hosts and image paths)."""
        def make() -> None:
            self._dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._dir.mkdir(mode=0o700, exist_ok=True)

        await asyncio.to_thread(make)

    async def write(self, entry: JournalEntry) -> None:
        """Replaces the session's entry. Raises OSError when the disk refuses."""
        path = self.path(entry.session_id)
        data = self._encoder.encode(msgspec.structs.replace(entry, updated_at=self._clock()))
        async with self._lock:
            await asyncio.to_thread(_write_atomic, path, data)

    async def remove(self, session_id: str) -> bool:
        """False when there was no entry."""
        path = self.path(session_id)
        async with self._lock:
            return await asyncio.to_thread(_remove, path)

    async def load(self) -> list[JournalEntry]:
        """Every readable entry. One that cannot be read is moved aside to
        `<name>.bad` with a warning: one bad file never stops the agent."""
        async with self._lock:
            entries, bad = await asyncio.to_thread(self._read_all)
        for name, why in bad:
            self._log.warning(
                "journal_entry_unreadable", file=name,
                reason=f"{why}; moved aside to {name}{BAD_SUFFIX}, the session it held is forgotten",
            )
        return entries

    async def prune(self, entries: Iterable[JournalEntry], *, now: float, keep_seconds: float) -> list[JournalEntry]:
        """Removes stale finished source entries; returns the others."""
        kept = []
        for entry in entries:
            if is_stale(entry, now, keep_seconds):
                await self.remove(entry.session_id)
                self._log.info("journal_entry_pruned", session_id=entry.session_id, vm=entry.vm)
            else:
                kept.append(entry)
        return kept

    def _read_all(self) -> tuple[list[JournalEntry], list[tuple[str, str]]]:
        entries: list[JournalEntry] = []
        bad: list[tuple[str, str]] = []
        if not self._dir.is_dir():
            return entries, bad
        for path in sorted(self._dir.iterdir()):
            if path.name.endswith(TEMP_SUFFIX):
                # A write that died before its rename: the entry it replaced still stands.
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if not path.name.endswith(SUFFIX):
                continue
            try:
                entry = self._decoder.decode(path.read_bytes())
                if path.name != f"{entry.session_id}{SUFFIX}":
                    raise ValueError(f"it holds session {entry.session_id!r}, not the one it is named after")
            except (OSError, ValueError) as exc:  # msgspec's decode and validation errors are ValueErrors
                bad.append((path.name, f"cannot read {path.name}: {exc}"))
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_name(path.name + BAD_SUFFIX))
                continue
            entries.append(entry)
        return entries, bad


def _write_atomic(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_folder(path.parent)


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    _fsync_folder(path.parent)
    return True


def _fsync_folder(folder: Path) -> None:
    """The rename (or unlink) itself survives a power cut only once the folder is synced."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
