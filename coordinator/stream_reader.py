"""Reading a stretch of a JetStream stream in order, bounded: an ephemeral pull
consumer (no acks, in memory, one copy) from a sequence or a time, fetched in
batches and deleted after. The servers filter by subject; the reader never
holds more than one batch."""

import datetime
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

# An abandoned consumer (a coordinator that died mid-read) is removed by the servers after this.
INACTIVE_SECONDS = 30.0
FETCH_TIMEOUT = 5.0


@dataclass(frozen=True)
class Stored:
    seq: int
    subject: str
    data: bytes
    # When the servers stored it (wall clock, seconds).
    at: float


class Reader:
    def __init__(self, sub: JetStreamContext.PullSubscription, pending: int) -> None:
        self._sub = sub
        # Messages from the start that the stream held when the read began.
        self.pending = pending

    async def batch(self, count: int) -> list[Stored]:
        """Up to `count` of the messages pending (fewer at the end)."""
        count = min(count, self.pending)
        if count <= 0:
            return []
        try:
            msgs = await self._sub.fetch(count, timeout=FETCH_TIMEOUT)
        except nats.errors.TimeoutError:
            self.pending = 0  # removed meanwhile (age, size): nothing more to read
            return []
        self.pending -= len(msgs)
        found = []
        for msg in msgs:
            meta = msg.metadata
            found.append(Stored(meta.sequence.stream, msg.subject, msg.data, meta.timestamp.timestamp()))
        return found


@asynccontextmanager
async def reading(
    js: JetStreamContext, stream: str, *, filter_subjects: list[str], start_seq: int = 0, start_time: float = 0.0
) -> AsyncIterator[Reader]:
    """From sequence `start_seq`, else from time `start_time`, else from the oldest kept."""
    if start_seq:
        policy = dict(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq)
    elif start_time:
        at = datetime.datetime.fromtimestamp(start_time, datetime.timezone.utc)
        policy = dict(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=at)
    else:
        policy = dict(deliver_policy=DeliverPolicy.ALL)
    name = f"ferry_read_{secrets.token_hex(8)}"
    config = ConsumerConfig(
        name=name, ack_policy=AckPolicy.NONE, filter_subjects=filter_subjects, inactive_threshold=INACTIVE_SECONDS,
        mem_storage=True, num_replicas=1, **policy,
    )
    info = await js.add_consumer(stream, config)
    sub = await js.pull_subscribe_bind(name, stream=stream)
    try:
        yield Reader(sub, info.num_pending or 0)
    finally:
        try:
            await sub.unsubscribe()
            await js.delete_consumer(stream, name)
        except Exception:  # NATS away or the consumer gone: the servers remove it after INACTIVE_SECONDS
            pass


async def last_in_stream(js: JetStreamContext, stream: str) -> tuple[int, int]:
    """(first, last) sequence the stream holds now; (0, 0) when it is empty or missing."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return 0, 0
    state = info.state
    if not state.messages:
        return 0, 0
    return state.first_seq, state.last_seq
