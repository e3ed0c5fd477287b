"""Sessions in JetStream KV. Every change is a compare-and-set on the entry's revision,
so two coordinators (or two handlers) can never both move the same session."""

import base64
from collections.abc import Callable

import nats.js.errors
from nats.js import JetStreamContext

from ferry.coordinator.kv import CAS_ATTEMPTS, Bucket, TypedBucket, keys_of, open_bucket
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.session import Session, SessionCode, SessionState

BUCKET = "ferry_sessions"


class SessionStore:
    def __init__(self, bucket: Bucket) -> None:
        self._records = TypedBucket(bucket, Session, "session")

    @classmethod
    async def open(cls, js: JetStreamContext, *, bucket: str = BUCKET, replicas: int = 1) -> "SessionStore":
        return cls(await open_bucket(js, bucket, "Ferry migration sessions", replicas=replicas))

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context the bucket lives in (the archive stream is beside it)."""
        return self._records.bucket.js

    async def create(self, session: Session) -> int:
        return await self._records.create(session.id, session)

    async def get(self, session_id: str) -> tuple[Session, int]:
        return await self._records.get(session_id)

    async def put_if(self, session: Session, revision: int) -> int:
        """Write `session` only if the stored entry is still at `revision`."""
        return await self._records.put_if(session.id, session, revision)

    async def change(self, session_id: str, change: Callable[[Session], Session]) -> Session:
        return await self._records.change(session_id, change)

    async def all(self) -> list[Session]:
        return sorted(await self._records.all(), key=lambda s: s.created_at)

    async def entries(self) -> list[tuple[Session, int]]:
        """Every session in the bucket with the revision it was read at."""
        return await self._records.entries()

    async def remove_if(self, session_id: str, revision: int) -> None:
        """Take a session out of the bucket (it was archived), only if it is still at
        `revision`; FerryError(conflict) when it changed meanwhile. The delete
        marker goes too, with every earlier revision: the bucket's key listing
        stays as small as what it holds, however many sessions were ever archived."""
        bucket = self._records.bucket
        subject = f"{bucket.prefix}{session_id}"
        try:
            ack = await bucket.js.publish(
                subject, b"", headers={"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(revision)}
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in (10071, 10164):  # the wrong last sequence: someone wrote it since
                raise FerryError(ErrorCode.CONFLICT, f"session {session_id} changed under us (revision {revision} is stale)") from None
            raise
        # Only up to the marker: a write after it (there should be none) stays.
        await bucket.js.purge_stream(bucket.stream, subject=subject, seq=ack.seq + 1)


CLAIMS_BUCKET = "ferry_vm_claims"


class VmBusy(FerryError):
    """A second session for a VM that another session is moving (a `conflict`)."""

    def __init__(self, vm: str, holder: str) -> None:
        super().__init__(ErrorCode.CONFLICT, f"{vm} is already being moved by session {holder}")


def claim_key(vm: str) -> str:
    """A VM name is data, not a key: KV keys allow only `[-/_=.A-Za-z0-9]`, and a
    VM name may hold spaces or UTF-8. Unpadded base64url of its UTF-8 is always a key."""
    return "vm." + base64.urlsafe_b64encode(vm.encode()).decode().rstrip("=")


class VmClaims:
    """One session per VM at a time: a key per VM (claim_key), created atomically.

    A claim left by a session that has ended (a coordinator that died before
    releasing it) is taken over with a compare-and-set.
    """

    def __init__(self, bucket: Bucket, sessions: SessionStore) -> None:
        self._bucket = bucket
        self._kv = bucket.kv
        self._sessions = sessions

    @classmethod
    async def open(
        cls, js: JetStreamContext, sessions: SessionStore, *, bucket: str = CLAIMS_BUCKET, replicas: int = 1
    ) -> "VmClaims":
        return cls(
            await open_bucket(js, bucket, "Ferry: which session moves which VM", history=1, replicas=replicas), sessions
        )

    async def claim(self, vm: str, session_id: str) -> None:
        key = claim_key(vm)
        for _ in range(CAS_ATTEMPTS):
            try:
                await self._kv.create(key, session_id.encode())
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue  # released meanwhile; try creating again
            holder = (entry.value or b"").decode()
            if holder == session_id:
                return
            if holder and await self._holds(holder):
                raise VmBusy(vm, holder)
            try:
                await self._kv.update(key, session_id.encode(), last=entry.revision)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise FerryError(ErrorCode.CONFLICT, f"could not claim {vm}: it kept changing hands")

    async def _holds(self, session_id: str) -> bool:
        try:
            session, _ = await self._sessions.get(session_id)
        except FerryError:
            return False
        # A session that ended not knowing where its VM runs keeps the VM until settled.
        return not session.state.terminal or (
            session.state == SessionState.FAILED and session.code == SessionCode.NOT_CONFIRMED
        )

    async def release(self, vm: str, session_id: str) -> None:
        key = claim_key(vm)
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return
        if (entry.value or b"").decode() != session_id:
            return  # another session holds it now
        try:
            await self._kv.delete(key, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass

    async def holding_sessions(self) -> set[str]:
        found = set()
        for key in await keys_of(self._bucket):
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue  # released: a deleted key keeps a marker in the stream
            if entry.value:
                found.add(entry.value.decode())
        return found

    async def holder(self, vm: str) -> str | None:
        try:
            entry = await self._kv.get(claim_key(vm))
        except nats.js.errors.KeyNotFoundError:
            return None
        return (entry.value or b"").decode() or None
