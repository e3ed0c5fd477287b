"""Typed records in a JetStream KV bucket, changed only by compare-and-set.

Every change reads the entry, applies a pure function and writes it back only
if the entry's revision is unchanged; a lost race re-reads and re-applies. Two
writers (two handlers, or two coordinators) can never both move one record.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

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


async def open_bucket(js: JetStreamContext, bucket: str, description: str, *, history: int = 8) -> Bucket:
    try:
        kv = await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        kv = await js.create_key_value(
            KeyValueConfig(bucket=bucket, history=history, storage=StorageType.FILE, description=description)
        )
    return Bucket(kv, js, bucket)


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

    async def keys(self) -> list[str]:
        """Every key with a message in the bucket (deleted ones too: `all` skips them)."""
        return await keys_of(self._bucket)

    async def all(self) -> list[T]:
        values = []
        for key in await self.keys():
            found = await self.find(key)
            if found is not None:  # deleted between listing and reading otherwise
                values.append(found[0])
        return values
