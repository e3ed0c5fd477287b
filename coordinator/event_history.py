"""The `events` verb: stored events read back from the event stream, in the
order the servers stored them, bounded in what one request reads and sends."""

import nats.js.errors
from nats.js import JetStreamContext

from ferry.coordinator.event_page import (
    MAX_REPLY_BYTES,
    SCAN_CAP,
    EventPage,
    host_filter_subjects,
    stored_event_at,
    wanted,
)
from ferry.coordinator.stream_reader import last_in_stream, reading
from ferry.proto.codec import Decoder
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.history import EVENTS_STREAM, AnyEvent, EventsReply, EventsRequest

BATCH = 500


class EventHistory:
    def __init__(self, js: JetStreamContext, *, scan_cap: int = SCAN_CAP, max_bytes: int = MAX_REPLY_BYTES) -> None:
        self._js = js
        self._scan_cap = scan_cap
        self._max_bytes = max_bytes
        # Agents' reports are untrusted input: one that cannot be read is skipped, not fatal.
        self._decoder = Decoder(AnyEvent, "stored event")  # type: ignore[arg-type]

    async def read(self, request: EventsRequest) -> EventsReply:
        page = EventPage(limit=request.limit, max_bytes=self._max_bytes)
        try:
            _first, last = await last_in_stream(self._js, EVENTS_STREAM)
            if request.after and request.after >= last:
                return EventsReply(events=[], last_seq=request.after, scan_cap=self._scan_cap)
            async with reading(
                self._js, EVENTS_STREAM, filter_subjects=host_filter_subjects(request.host),
                start_seq=request.after + 1 if request.after else 0, start_time=request.since,
            ) as reader:
                if reader.pending == 0:
                    # Nothing from the start on at the moment the read began: all up to `last` came before it.
                    return EventsReply(events=[], last_seq=max(request.after, last), scan_cap=self._scan_cap)
                while not page.full and page.scanned < self._scan_cap:
                    stored = await reader.batch(min(BATCH, self._scan_cap - page.scanned))
                    if not stored:
                        break
                    for message in stored:
                        try:
                            event = stored_event_at(self._decoder.decode(message.data), message.at)
                        except FerryError:
                            event = None
                        keep = event is not None and wanted(event, message.subject, request, message.at)
                        if not page.offer(message.seq, message.subject, event, keep):
                            break
                more = page.full or reader.pending > 0
        except nats.js.errors.Error as exc:
            raise FerryError(ErrorCode.UNAVAILABLE, f"the event stream could not be read: {exc.description or exc}") from None
        return EventsReply(
            events=page.events, last_seq=max(page.last_seq, request.after), more=more,
            scanned=page.scanned, scan_cap=self._scan_cap,
        )
