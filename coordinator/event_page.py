"""Which stored events answer an `events` request, and how many fit one reply.
Pure: the stream is read elsewhere (coordinator/stream_reader.py)."""

from dataclasses import dataclass, field

import msgspec

from ferry.proto import subjects
from ferry.proto.codec import encode
from ferry.proto.history import AnyEvent, EventRecord, EventsRequest

# NATS refuses messages over max_payload (1 MiB by default): a reply stays well under.
MAX_REPLY_BYTES = 512 * 1024
# What one reply's record list costs beyond its records (the envelope and commas).
ENVELOPE_BYTES = 256
# The most stored messages one request reads, whatever it finds among them.
SCAN_CAP = 20_000


def hosts_of(event: AnyEvent) -> set[str]:
    """Every host an event names: its `host`, a session's source and destination, a retry's failed host."""
    names = {getattr(event, name, None) for name in ("host", "source", "dest", "failed_on")}
    return {n for n in names if isinstance(n, str) and n}


def vms_of(event: AnyEvent) -> set[str]:
    """Every VM an event names (a lost host's stranded VMs included)."""
    listed = getattr(event, "vms", ())  # a drain's `vms` is a count, a lost host's a list
    found = {getattr(event, "vm", None), *(listed if isinstance(listed, list) else ())}
    return {v for v in found if isinstance(v, str) and v}


def host_filter_subjects(host: str | None) -> list[str]:
    """What the stream is read for: a host's own reports and the coordinator's
    events (filtered by what they name); everything without a host."""
    if host is None:
        return [subjects.COORDINATOR_EVENTS, subjects.ALL_HOST_EVENTS]
    return [subjects.COORDINATOR_EVENTS, subjects.host_event(host)]


def wanted(event: AnyEvent, subject: str, request: EventsRequest, stored_at: float) -> bool:
    # The time the servers stored it, not the event's own claim (an agent's clock may be off).
    if request.since and stored_at < request.since:
        return False
    if request.host is not None:
        from_host = subject != subjects.COORDINATOR_EVENTS
        if not (from_host and subjects.speaks_for(subject, request.host)) and request.host not in hosts_of(event):
            return False
    if request.vm is not None and request.vm not in vms_of(event):
        return False
    return True


@dataclass
class EventPage:
    """The reply being filled: events in stream order until the limit or the size cap."""

    limit: int
    max_bytes: int = MAX_REPLY_BYTES
    events: list[EventRecord] = field(default_factory=list)
    last_seq: int = 0
    size: int = ENVELOPE_BYTES
    scanned: int = 0
    full: bool = False
    unreadable: int = 0

    def offer(self, seq: int, subject: str, event: AnyEvent | None, keep: bool) -> bool:
        """One stored message, in order (`event` None: it could not be read; `keep`:
        it answers the request). False once the page is full: this message is
        not taken, and `last_seq` stays before it for the next request."""
        if self.full:
            return False
        if event is not None and keep:
            if len(self.events) >= self.limit:
                self.full = True
                return False
            record = EventRecord(seq=seq, subject=subject, event=event)
            cost = len(encode(record)) + 1
            if self.size + cost > self.max_bytes:
                self.full = True
                return False
            self.events.append(record)
            self.size += cost
        elif event is None:
            self.unreadable += 1
        self.scanned += 1
        self.last_seq = seq
        return True


def stored_event_at(event: AnyEvent, stored_at: float) -> AnyEvent:
    """The event with its time: an agent of an older version may have sent none."""
    if event.at > 0:
        return event
    return msgspec.structs.replace(event, at=stored_at)
