"""`ferry-admin backup` / `ferry-admin restore`: Ferry's KV buckets to a file and back.

What is kept is what a new cluster needs to carry on: sessions, VM claims,
drain records, settings (limits) and any other `ferry_*` bucket, each key's
latest value. The leader lease is left out: it belongs to the processes that
hold it, and a restored cluster elects its own. Restore is for a control plane
that is stopped (every coordinator), so it refuses while a lease is being
renewed: a running leader would overwrite, or act on, a half-restored state.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from ferry.coordinator.kv import Bucket, keys_of, open_bucket, replicas_for
from ferry.coordinator.leadership import BUCKET as LEADER_BUCKET
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.leader import Lease
from ferry.runtime.version import VERSION

FORMAT = "ferry-kv-backup/1"
# Every bucket Ferry makes is called ferry_<something>; its stream KV_ferry_<something>.
BUCKET_PREFIX = "ferry_"
LEASE_KEY = "lease"
_LEASE = msgspec.json.Decoder(Lease)


class Entry(msgspec.Struct, frozen=True):
    key: str
    value: bytes  # as stored: JSON for Ferry's records, base64 in the file


class BucketBackup(msgspec.Struct, frozen=True):
    name: str
    history: int
    entries: list[Entry]


class Backup(msgspec.Struct, frozen=True):
    format: str
    ferry_version: str
    taken_at: float
    buckets: list[BucketBackup]


_BACKUP = msgspec.json.Decoder(Backup)


def read_backup(path: Path) -> Backup:
    try:
        backup = _BACKUP.decode(path.read_bytes())
    except OSError as exc:
        raise FerryError(ErrorCode.BAD_REQUEST, f"cannot read {path}: {exc.strerror}") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FerryError(ErrorCode.BAD_REQUEST, f"{path} is not a backup written by ferry-admin backup ({exc})") from None
    if backup.format != FORMAT:
        raise FerryError(ErrorCode.BAD_REQUEST, f"{path} is a {backup.format!r} backup; this ferry-admin reads {FORMAT!r}")
    return backup


def write_backup(path: Path, backup: Backup) -> None:
    """Whole or not at all (a temporary file renamed over), owner-only: sessions
    name every VM and host of the cluster."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.format(msgspec.json.encode(backup)) + b"\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def lease_in_use(lease: Lease | None, now: float) -> bool:
    """Whether a coordinator may still be leading: its lease renewed within twice
    the lease's length (clocks of two machines differ a little)."""
    return lease is not None and now - lease.renewed_at < 2 * lease.lease_seconds


def stale_keys(present: list[str], restored: list[str]) -> list[str]:
    """Keys a bucket holds that the backup does not: deleted, so the bucket is as backed up."""
    wanted = set(restored)
    return sorted(key for key in present if key not in wanted)


async def ferry_buckets(js: JetStreamContext) -> list[str]:
    names = []
    for stream in await js.streams_info():
        name = stream.config.name.removeprefix("KV_")
        if stream.config.name.startswith("KV_") and name.startswith(BUCKET_PREFIX) and name != LEADER_BUCKET:
            names.append(name)
    return sorted(names)


async def take_backup(nc: Client) -> Backup:
    js = nc.jetstream()
    buckets = []
    for name in await ferry_buckets(js):
        kv = await js.key_value(name)
        bucket = Bucket(kv, js, name)
        entries = []
        for key in await keys_of(bucket):
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue  # deleted: nothing to keep
            if entry.value:
                entries.append(Entry(key=key, value=entry.value))
        status = await kv.status()
        buckets.append(BucketBackup(name=name, history=status.history or 1, entries=entries))
    return Backup(format=FORMAT, ferry_version=VERSION, taken_at=time.time(), buckets=buckets)


async def current_lease(js: JetStreamContext) -> Lease | None:
    try:
        kv = await js.key_value(LEADER_BUCKET)
        entry = await kv.get(LEASE_KEY)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
        return None
    try:
        return _LEASE.decode(entry.value or b"")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def restore(nc: Client, backup: Backup, *, force: bool = False) -> dict[str, tuple[int, int]]:
    """Each bucket made equal to its backup; returns bucket -> (keys written, keys deleted)."""
    js = nc.jetstream()
    lease = await current_lease(js)
    if lease_in_use(lease, time.time()) and not force:
        assert lease is not None
        raise FerryError(
            ErrorCode.CONFLICT,
            f"coordinator {lease.holder} renewed the leader lease {time.time() - lease.renewed_at:.0f} s ago: "
            "stop every ferry-coordinator before restoring (or --force if you know it is gone)",
        )
    replicas = replicas_for(nc._server_info)
    done = {}
    for saved in backup.buckets:
        bucket = await open_bucket(js, saved.name, "Ferry (restored)", history=saved.history, replicas=replicas)
        present = await keys_of(bucket)
        for entry in saved.entries:
            await bucket.kv.put(entry.key, entry.value)
        stale = stale_keys(present, [e.key for e in saved.entries])
        for key in stale:
            try:
                await bucket.kv.delete(key)
            except nats.js.errors.KeyNotFoundError:
                pass
        done[saved.name] = (len(saved.entries), len(stale))
    return done
