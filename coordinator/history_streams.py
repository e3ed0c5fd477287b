"""The two JetStream streams of Ferry's history: every event (`FERRY_EVENTS`) and
finished sessions that left the hot bucket (`FERRY_SESSIONS`). Every coordinator
creates them at start, or brings an existing one to the configured retention,
and scales its copies up (never down) as coordinator/kv.py does for buckets."""

import asyncio
import dataclasses

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from ferry.coordinator.config import HistorySettings
from ferry.coordinator.kv import JETSTREAM_READY_SECONDS
from ferry.proto import subjects
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.history import ARCHIVE_STREAM, ARCHIVE_SUBJECTS, EVENTS_STREAM

# A leader that dies after archiving a session and before deleting it from the
# hot bucket archives it again when the next one takes over: within this window
# JetStream drops the copy (same `Nats-Msg-Id`).
ARCHIVE_DUPLICATE_WINDOW = 600.0


def events_stream_config(settings: HistorySettings, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=EVENTS_STREAM,
        description="Ferry: every event the coordinator and the agents announced",
        subjects=[subjects.COORDINATOR_EVENTS, subjects.ALL_HOST_EVENTS],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.events_max_age,
        max_bytes=settings.events_max_bytes or -1,
        num_replicas=replicas,
        allow_direct=True,
    )


def archive_stream_config(settings: HistorySettings, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=ARCHIVE_STREAM,
        description="Ferry: finished migration sessions, archived from the hot bucket",
        subjects=[ARCHIVE_SUBJECTS],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.archive_max_age,
        max_bytes=settings.archive_max_bytes or -1,
        duplicate_window=ARCHIVE_DUPLICATE_WINDOW,
        num_replicas=replicas,
        allow_direct=True,
    )


async def open_history_streams(js: JetStreamContext, settings: HistorySettings, *, replicas: int) -> None:
    for config in (events_stream_config(settings, replicas), archive_stream_config(settings, replicas)):
        await ensure_stream(js, config)


async def ensure_stream(js: JetStreamContext, wanted: StreamConfig) -> None:
    """The stream, created as `wanted` if missing, else given `wanted`'s retention
    and at least its copies. Retried while JetStream elects its meta leader."""
    deadline = asyncio.get_running_loop().time() + JETSTREAM_READY_SECONDS
    while True:
        try:
            await _create_or_update(js, wanted)
            return
        except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
            if asyncio.get_running_loop().time() > deadline:
                raise FerryError(
                    ErrorCode.UNAVAILABLE, f"JetStream did not answer for stream {wanted.name} within {JETSTREAM_READY_SECONDS:.0f} s"
                ) from None
            await asyncio.sleep(0.5)


async def _create_or_update(js: JetStreamContext, wanted: StreamConfig) -> None:
    log = structlog.get_logger().bind(stream=wanted.name)
    try:
        info = await js.stream_info(wanted.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(wanted)
            log.info("stream_created", replicas=wanted.num_replicas)
            return
        except nats.js.errors.BadRequestError:
            info = await js.stream_info(wanted.name)  # another coordinator created it meanwhile
    have = info.config
    replicas = max(have.num_replicas or 1, wanted.num_replicas or 1)
    if (have.max_age, have.max_bytes, have.num_replicas) == (wanted.max_age, wanted.max_bytes, replicas):
        return
    updated = dataclasses.replace(have, max_age=wanted.max_age, max_bytes=wanted.max_bytes, num_replicas=replicas)
    try:
        await js.update_stream(updated)
    except nats.js.errors.APIError as exc:
        # Too few servers for the copies wanted: keep what it has; the next start tries again.
        log.warning("stream_not_updated", error=exc.description or str(exc))
        return
    log.info("stream_updated", max_age=wanted.max_age, max_bytes=wanted.max_bytes, replicas=replicas)
