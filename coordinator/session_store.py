"""Sessions in JetStream KV. Every change is a compare-and-set on the entry's revision,
so two coordinators (or two handlers) can never both move the same session."""

from collections.abc import Callable

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from proto.codec import Decoder, encode
from proto.errors import ErrorCode, FerryError
from proto.session import Session

BUCKET = "ferry_sessions"
# Enough attempts for a burst of concurrent writers; each retry re-reads the entry.
CAS_ATTEMPTS = 20


class SessionStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._decoder = Decoder(Session, "stored session")

    @classmethod
    async def open(cls, js: JetStreamContext, *, bucket: str = BUCKET) -> "SessionStore":
        try:
            kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(
                KeyValueConfig(bucket=bucket, history=8, storage=StorageType.FILE,
                               description="Ferry migration sessions")
            )
        return cls(kv)

    async def create(self, session: Session) -> int:
        try:
            return await self._kv.create(session.id, encode(session))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise FerryError(ErrorCode.CONFLICT, f"session {session.id} exists already") from None

    async def get(self, session_id: str) -> tuple[Session, int]:
        try:
            entry = await self._kv.get(session_id)
        except nats.js.errors.KeyNotFoundError:
            raise FerryError(ErrorCode.NOT_FOUND, f"there is no session {session_id}") from None
        if entry.value is None:
            raise FerryError(ErrorCode.NOT_FOUND, f"there is no session {session_id}")
        return self._decoder.decode(entry.value), entry.revision

    async def put_if(self, session: Session, revision: int) -> int:
        """Write `session` only if the stored entry is still at `revision`."""
        try:
            return await self._kv.update(session.id, encode(session), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise FerryError(
                ErrorCode.CONFLICT, f"session {session.id} changed under us (revision {revision} is stale)"
            ) from None

    async def change(self, session_id: str, change: Callable[[Session], Session]) -> Session:
        """Read, apply a pure change, compare-and-set; on a lost race re-read and re-apply.

        `change` may raise FerryError (for example an illegal transition after
        another writer moved the session): that ends the attempt.
        """
        for _ in range(CAS_ATTEMPTS):
            current, revision = await self.get(session_id)
            updated = change(current)
            try:
                await self.put_if(updated, revision)
                return updated
            except FerryError as exc:
                if exc.code != ErrorCode.CONFLICT:
                    raise
        raise FerryError(ErrorCode.CONFLICT, f"session {session_id} kept changing; gave up after {CAS_ATTEMPTS} tries")

    async def all(self) -> list[Session]:
        try:
            keys = await self._kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        sessions = []
        for key in keys:
            try:
                sessions.append((await self.get(key))[0])
            except FerryError:
                continue  # deleted between listing and reading
        return sorted(sessions, key=lambda s: s.created_at)


CLAIMS_BUCKET = "ferry_vm_claims"


class VmClaims:
    """One session per VM at a time: a key per VM, created atomically.

    A claim left by a session that has ended (a coordinator that died before
    releasing it) is taken over with a compare-and-set.
    """

    def __init__(self, kv: KeyValue, sessions: SessionStore) -> None:
        self._kv = kv
        self._sessions = sessions

    @classmethod
    async def open(cls, js: JetStreamContext, sessions: SessionStore, *, bucket: str = CLAIMS_BUCKET) -> "VmClaims":
        try:
            kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(
                KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE,
                               description="Ferry: which session moves which VM")
            )
        return cls(kv, sessions)

    async def claim(self, vm: str, session_id: str) -> None:
        for _ in range(CAS_ATTEMPTS):
            try:
                await self._kv.create(vm, session_id.encode())
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._kv.get(vm)
            except nats.js.errors.KeyNotFoundError:
                continue  # released meanwhile; try creating again
            holder = (entry.value or b"").decode()
            if holder == session_id:
                return
            if holder and await self._holds(holder):
                raise FerryError(ErrorCode.CONFLICT, f"{vm} is already being moved by session {holder}")
            try:
                await self._kv.update(vm, session_id.encode(), last=entry.revision)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise FerryError(ErrorCode.CONFLICT, f"could not claim {vm}: it kept changing hands")

    async def _holds(self, session_id: str) -> bool:
        try:
            session, _ = await self._sessions.get(session_id)
        except FerryError:
            return False
        return not session.state.terminal

    async def release(self, vm: str, session_id: str) -> None:
        try:
            entry = await self._kv.get(vm)
        except nats.js.errors.KeyNotFoundError:
            return
        if (entry.value or b"").decode() != session_id:
            return  # another session holds it now
        try:
            await self._kv.delete(vm, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass

    async def holder(self, vm: str) -> str | None:
        try:
            entry = await self._kv.get(vm)
        except nats.js.errors.KeyNotFoundError:
            return None
        return (entry.value or b"").decode() or None
