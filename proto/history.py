"""History: the event stream read back (`ferry events`), and where finished
sessions go once they leave the hot bucket (the archive stream)."""

from typing import Annotated

import msgspec

from ferry.proto.events import CoordinatorEvent, HostEvent
from ferry.proto.names import HostName, NonNegative, VmName

# Any event the stream holds: what the leader announced or what an agent reported.
AnyEvent = CoordinatorEvent | HostEvent

# JetStream streams (created by every coordinator at start, like the KV buckets).
EVENTS_STREAM = "FERRY_EVENTS"
ARCHIVE_STREAM = "FERRY_SESSIONS"
# A finished session's last copy is the last message on its subject in the archive.
ARCHIVE_PREFIX = "ferry.coordinator.archive"
ARCHIVE_SUBJECTS = f"{ARCHIVE_PREFIX}.*"


def archive_subject(session_id: str) -> str:
    """A session id is `[a-z0-9]`, a valid subject token as it is."""
    return f"{ARCHIVE_PREFIX}.{session_id}"


class EventsRequest(msgspec.Struct, frozen=True):
    # Events stored at or after this wall time (seconds since the epoch); 0: from the oldest kept.
    since: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Events after this stream sequence (what the last reply's `last_seq` said): `--follow`.
    after: NonNegative = 0
    # Only events about this host (its own reports, and the coordinator's naming it).
    host: HostName | None = None
    # Only events naming this VM.
    vm: VmName | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000


class EventRecord(msgspec.Struct, frozen=True):
    """One stored event with where it sits in the stream."""

    seq: int
    subject: str
    event: AnyEvent


class EventsReply(msgspec.Struct, frozen=True, tag="events"):
    # In stream order (the order the servers stored them).
    events: list[EventRecord]
    # The last stream sequence looked at: ask again with `after` set to it for what follows.
    last_seq: NonNegative = 0
    # Stopped before the end of the stream (the limit, the reply's size or the scan cap):
    # ask again with `after = last_seq` for the rest.
    more: bool = False
    # Stored messages looked at for this reply, and the most one request looks at.
    scanned: NonNegative = 0
    scan_cap: NonNegative = 0
