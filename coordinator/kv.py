"""Typed records in a JetStream KV bucket, changed only by compare-and-set.

Every change reads the entry, applies a pure function and writes it back only
if the entry's revision is unchanged; a lost race re-reads and re-applies. Two
writers (two handlers, or two coordinators) can never both move one record.
"""

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from ferry.proto.codec import Decoder, encode
from ferry.proto.errors import ErrorCode, FerryError

T = TypeVar("T")

# Enough attempts for a burst of concurrent writers; each retry re-reads the entry.
CAS_ATTEMPTS = 20


@dataclass(frozen=True)
class Bucket:
    """A KV bucket with what listing its keys needs: its stream and subject prefix
    follow the KV protocol's naming (`KV_<bucket>`, `$KV.<bucket>.<key>`)."""

    kv: KeyValue
    js: JetStreamContext
    name: str

    @property
    def stream(self) -> str:
        return f"KV_{self.name}"

    @property
    def prefix(self) -> str:
        return f"$KV.{self.name}."


async def keys_of(bucket: Bucket) -> list[str]:
    """Every key with a message in the bucket (deleted ones too).

    Read from the bucket's stream state in one request. nats-py's
    `KeyValue.keys()` replays the bucket through a watcher that can end its
    initial replay early and return some keys or none (nats-io/nats.py#842,
    #995): the lab saw `ferry sessions` come back empty right after a drain.
    """
    info = await bucket.js.stream_info(bucket.stream, subjects_filter=f"{bucket.prefix}>")
    return sorted(subject.removeprefix(bucket.prefix) for subject in (info.state.subjects or {}))


# Reads of one bucket in flight at once (TypedBucket.entries).
READS_IN_FLIGHT = 64
# JetStream keeps at most this many copies of a stream.
MAX_REPLICAS = 5
# A cluster elects its JetStream meta leader a moment after it starts (and after
# losing one); until then bucket requests fail, and are tried again this long.
JETSTREAM_READY_SECONDS = 30.0


def cluster_size(server_info: dict[str, Any]) -> int:
    """How many servers the connected one knows in its cluster (itself included):
    `connect_urls` of its INFO lists every server's client URL; 1 without a cluster."""
    if not server_info.get("cluster"):
        return 1
    return max(1, len(set(server_info.get("connect_urls") or [])))


def replicas_for(server_info: dict[str, Any], configured: int = 0) -> int:
    """Copies each bucket keeps: the configured number, else one per server of
    the cluster (R3 on three servers, R1 on one), at most JetStream's five."""
    return configured or min(cluster_size(server_info), MAX_REPLICAS)


async def open_bucket(
    js: JetStreamContext, bucket: str, description: str, *, history: int = 8, replicas: int = 1
) -> Bucket:
    """The bucket, created with `replicas` copies if it is missing, and scaled up
    to them if it has fewer (a bucket made on a single server, then clustered).
    Never scaled down: copies an operator added stay."""
    deadline = asyncio.get_running_loop().time() + JETSTREAM_READY_SECONDS
    while True:
        try:
            kv = await _open_or_create(js, bucket, description, history, replicas)
            await _scale_up(js, bucket, replicas)
            return Bucket(kv, js, bucket)
        except (
            nats.js.errors.ServiceUnavailableError,
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.NotFoundError,
        ):
            # No JetStream meta leader yet (a cluster starting, or electing); or a
            # stream another coordinator created a moment ago that this server
            # does not show yet ("stream not found" right after it was found).
            if asyncio.get_running_loop().time() > deadline:
                raise FerryError(
                    ErrorCode.UNAVAILABLE, f"JetStream did not answer for bucket {bucket} within {JETSTREAM_READY_SECONDS:.0f} s"
                ) from None
            await asyncio.sleep(0.5)


async def _open_or_create(js: JetStreamContext, bucket: str, description: str, history: int, replicas: int) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket, history=history, storage=StorageType.FILE, description=description, replicas=replicas
            )
        )
    except nats.js.errors.BadRequestError:
        # Another coordinator created it meanwhile (with its own settings): use that one.
        return await js.key_value(bucket)


async def _scale_up(js: JetStreamContext, bucket: str, replicas: int) -> None:
    info = await js.stream_info(f"KV_{bucket}")
    if (info.config.num_replicas or 1) >= replicas:
        return
    before = info.config.num_replicas or 1
    try:
        await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
    except nats.js.errors.APIError as exc:
        # Too few servers up right now: keep the copies it has; the next start tries again.
        structlog.get_logger().warning(
            "bucket_not_scaled", bucket=bucket, replicas=before, wanted=replicas, error=exc.description or str(exc)
        )
        return
    structlog.get_logger().info("bucket_scaled", bucket=bucket, replicas_before=before, replicas=replicas)


async def replicas_of(js: JetStreamContext, bucket: str) -> tuple[int, int, str]:
    """(replicas configured, servers holding a current copy, the stream's leader) of a bucket."""
    info = await js.stream_info(f"KV_{bucket}")
    cluster = info.cluster
    leader = (cluster.leader or "") if cluster else ""
    current = (1 if leader else 0) + sum(1 for peer in (cluster.replicas or []) if peer.current) if cluster else 1
    return info.config.num_replicas or 1, current, leader


class TypedBucket(Generic[T]):
    def __init__(self, bucket: Bucket, type_: type[T], what: str) -> None:
        self._bucket = bucket
        self._kv = bucket.kv
        self._decoder = Decoder(type_, f"stored {what}")
        self._what = what

    async def create(self, key: str, value: T) -> int:
        try:
            return await self._kv.create(key, encode(value))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise FerryError(ErrorCode.CONFLICT, f"{self._what} {key} exists already") from None

    @property
    def bucket(self) -> Bucket:
        return self._bucket

    def decode(self, data: bytes) -> T:
        return self._decoder.decode(data)

    async def find(self, key: str) -> tuple[T, int] | None:
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return self._decoder.decode(entry.value), entry.revision

    async def get(self, key: str) -> tuple[T, int]:
        found = await self.find(key)
        if found is None:
            raise FerryError(ErrorCode.NOT_FOUND, f"there is no {self._what} {key}")
        return found

    async def put(self, key: str, value: T) -> int:
        return await self._kv.put(key, encode(value))

    async def put_if(self, key: str, value: T, revision: int) -> int:
        """Write `value` only if the stored entry is still at `revision`."""
        try:
            return await self._kv.update(key, encode(value), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise FerryError(
                ErrorCode.CONFLICT, f"{self._what} {key} changed under us (revision {revision} is stale)"
            ) from None

    async def change(self, key: str, change: Callable[[T], T]) -> T:
        """Read, apply a pure change, compare-and-set; on a lost race re-read and re-apply.

        `change` may raise FerryError (for example an illegal transition after
        another writer moved the record): that ends the attempt.
        """
        for _ in range(CAS_ATTEMPTS):
            current, revision = await self.get(key)
            updated = change(current)
            try:
                await self.put_if(key, updated, revision)
                return updated
            except FerryError as exc:
                if exc.code != ErrorCode.CONFLICT:
                    raise
        raise FerryError(ErrorCode.CONFLICT, f"{self._what} {key} kept changing; gave up after {CAS_ATTEMPTS} tries")

    async def delete(self, key: str) -> None:
        try:
            await self._kv.delete(key)
        except nats.js.errors.KeyNotFoundError:
            pass

    async def delete_if(self, key: str, revision: int) -> None:
        """Delete only if the stored entry is still at `revision`."""
        try:
            await self._kv.delete(key, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise FerryError(
                ErrorCode.CONFLICT, f"{self._what} {key} changed under us (revision {revision} is stale)"
            ) from None

    async def keys(self) -> list[str]:
        """Every key with a message in the bucket (deleted ones too: `all` skips them)."""
        return await keys_of(self._bucket)

    async def all(self) -> list[T]:
        return [value for value, _revision in await self.entries()]

    async def entries(self) -> list[tuple[T, int]]:
        """Every record with the revision it was read at (deleted ones skipped). A
        few reads are in flight at once: thousands of keys (a first start after an
        upgrade) take seconds, not minutes, without flooding the servers."""
        keys = await self.keys()
        found: list[tuple[T, int]] = []
        for at in range(0, len(keys), READS_IN_FLIGHT):
            entries = await asyncio.gather(*(self.find(key) for key in keys[at : at + READS_IN_FLIGHT]))
            found.extend(entry for entry in entries if entry is not None)  # None: deleted since the listing
        return found


class WatchedBucket(Generic[T]):
    """Every record of a bucket as KV last said: read whole at start (and after
    NATS comes back), then kept current by a KV watch. Nothing here is a
    per-process copy of the truth: writers compare-and-set against the revision
    it holds and tell it what they wrote (`saw`); every other process learns the
    change from its watch.
    """

    def __init__(self, records: TypedBucket[T], on_change: Callable[[str], None] | None = None) -> None:
        self._records = records
        self._on_change = on_change
        self._values: dict[str, tuple[T, int]] = {}
        # Deleted keys and the revision they were deleted after: an older put the
        # watch delivers late must not bring a record back.
        self._gone: dict[str, int] = {}
        self._task: asyncio.Task | None = None
        self._log = structlog.get_logger().bind(component="kv_watch", bucket=records.bucket.name)

    @property
    def store(self) -> TypedBucket[T]:
        return self._records

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._watch(), name=f"watch-{self._records.bucket.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def get(self, key: str) -> tuple[T, int] | None:
        return self._values.get(key)

    def values(self) -> dict[str, T]:
        return {key: value for key, (value, _rev) in sorted(self._values.items())}

    async def reload(self) -> None:
        """Read every record again (after a reconnect the watch may have missed some)."""
        found: dict[str, tuple[T, int]] = {}
        for key in await self._records.keys():
            entry = await self._records.find(key)
            if entry is not None:
                found[key] = entry
        changed = set(found) ^ set(self._values) | {k for k in found if self._values.get(k) != found[k]}
        self._values = found
        for key in found:
            self._gone.pop(key, None)
        for key in changed:
            self._changed(key)

    async def write(self, key: str, value: T) -> int:
        """Store `value` as a compare-and-set on the revision held here (a create when
        none is held) and hold it; a writer that got there first makes it a CONFLICT."""
        held = self._values.get(key)
        store = self._records
        written = await (store.put_if(key, value, held[1]) if held is not None else store.create(key, value))
        self.saw(key, value, written)
        return written

    async def remove(self, key: str) -> T | None:
        """Delete the record held, as a compare-and-set on its revision; the record, or None."""
        held = self._values.get(key)
        if held is None:
            return None
        await self._records.delete_if(key, held[1])
        self.saw(key, None, held[1] + 1)
        return held[0]

    def saw(self, key: str, value: T | None, revision: int) -> None:
        """A record at `revision` (None: deleted by the entry at `revision`), from the
        watch or from this process's own write; anything not newer than what is
        held is ignored."""
        held = self._values.get(key)
        if held is not None and held[1] >= revision:
            return
        if value is None:
            if held is None and key in self._gone:
                return
            self._values.pop(key, None)
            self._gone[key] = revision
        else:
            if self._gone.get(key, 0) >= revision:
                return
            self._gone.pop(key, None)
            self._values[key] = (value, revision)
        self._changed(key)

    def _changed(self, key: str) -> None:
        if self._on_change is not None:
            self._on_change(key)

    async def _watch(self) -> None:
        while True:
            try:
                watcher = await self._records.bucket.kv.watchall()
                async for entry in watcher:
                    if entry is None:  # the end of the initial replay
                        continue
                    if entry.operation in (KV_DEL, KV_PURGE):
                        self.saw(entry.key, None, entry.revision)
                    elif entry.value is not None:
                        try:
                            self.saw(entry.key, self._records.decode(entry.value), entry.revision)
                        except FerryError as exc:
                            self._log.warning("record_unreadable", key=entry.key, reason=exc.message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.warning("watch_restarted", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(1.0)
                try:
                    await self.reload()
                except Exception as reload_exc:
                    self._log.warning("reload_failed", error=str(reload_exc) or type(reload_exc).__name__)
