"""The one encode/decode path. Wire format: JSON (readable with `nats sub`).

Every decoder here turns any bytes into a value or FerryError(bad_request) with a
sentence: never another exception, a hang or memory in proportion to a forged
size. What bounds a hostile message:

- its size, checked before parsing (the caps below): msgspec allocates for what
  it parses, and an unknown field is skipped without being kept;
- its nesting: msgspec counts its own recursion against Python's recursion limit
  and raises RecursionError long before the C stack is at risk (depth ~1000);
- its numbers: a float beyond the double range is refused by msgspec ("Number
  out of range"); an integer beyond 64 bits, which msgspec would read as one of
  Python's unbounded ints, is refused here (`huge_integer`);
- its strings and lists: the Structs' max_length constraints, within the size cap.
"""

import re
from typing import Any, Generic, TypeVar

import msgspec

from ferry.proto.errors import ErrorCode, ErrorReply, FerryError
from ferry.proto.names import PATTERN_MEANINGS

T = TypeVar("T")

# A request to a verb (`ferry.api.*`, `ferry.agent.<host>.*`). The largest real one
# is a prepare request: a VM description with its CPU XML, disks and interfaces,
# a few tens of kB at most. A quarter of a MiB leaves a wide margin.
MAX_REQUEST_BYTES = 256 * 1024
# Everything else: heartbeats (about 360 bytes per VM, so ~360 kB for a host with
# 1,000 VMs), session updates, events, KV records (a drain of every VM of a host),
# and replies (`hosts` carries every host's VMs). 8 MiB is eight times NATS's
# default max_payload (which refuses bigger messages first) and still cheap to parse.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

# Integers on the wire are counts, sizes and times: int64 or uint64 at most.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
# Any integer outside those bounds has at least 19 digits (2**63 has 19).
_LONG_DIGITS = re.compile(rb"\d{19,}")

_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()
_REGEX_WORDS = {f"`str` matching regex {pattern!r}": meaning for pattern, meaning in PATTERN_MEANINGS.items()}


def readable(error: msgspec.ValidationError) -> str:
    """msgspec's message with the regexes it names replaced by what they mean."""
    message = str(error)
    for words, meaning in _REGEX_WORDS.items():
        message = message.replace(words, meaning)
    return message


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


def refuse_oversized(data: bytes, max_bytes: int, what: str) -> None:
    """Raises FerryError(bad_request) when `data`, read as `what`, is bigger than `max_bytes`."""
    if len(data) > max_bytes:
        raise FerryError(ErrorCode.BAD_REQUEST, f"{what} is {len(data)} bytes, more than the {max_bytes} accepted")


def huge_integer(data: bytes) -> int | None:
    """An integer in the JSON `data` outside INT_MIN..INT_MAX, if there is one.

    Cheap for ordinary messages: only a run of 19 digits (in a number, or in a
    string) makes it read the document untyped and look at every number."""
    if _LONG_DIGITS.search(data) is None:
        return None
    try:
        stack = [_any_decoder.decode(data)]
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None  # not JSON at all: the typed read says what is wrong
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, int) and not isinstance(item, bool) and not INT_MIN <= item <= INT_MAX:
            return item
    return None


def _decode(decoder: msgspec.json.Decoder, data: bytes, what: str, max_bytes: int) -> Any:
    """The capped read every decoder shares: the value, or FerryError(bad_request)."""
    refuse_oversized(data, max_bytes, what)
    if not data.isascii():
        # JSON is UTF-8 (RFC 8259); msgspec skips unknown fields unchecked, so check all of it.
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FerryError(ErrorCode.BAD_REQUEST, f"{what} is not UTF-8 (byte {exc.start})") from None
    huge = huge_integer(data)
    if huge is not None:
        raise FerryError(
            ErrorCode.BAD_REQUEST, f"{what} holds an integer of {len(str(abs(huge)))} digits; integers here fit in 64 bits"
        )
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise FerryError(ErrorCode.BAD_REQUEST, f"invalid {what}: {readable(exc)}") from None
    except msgspec.DecodeError as exc:
        raise FerryError(ErrorCode.BAD_REQUEST, f"{what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise FerryError(ErrorCode.BAD_REQUEST, f"{what} is nested too deeply to be read") from None


class Decoder(Generic[T]):
    """A typed decoder built once; any bad input becomes FerryError(bad_request).

    An empty payload decodes as `{}` so that requests without arguments can be
    sent with no body (`nats req ferry.api.hosts ''`). `max_bytes`: bigger
    payloads are refused unread (MAX_REQUEST_BYTES for verbs' requests, see
    `request_decoder`).
    """

    def __init__(self, type_: type[T], what: str, *, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        if max_bytes < 2:
            raise ValueError(f"max_bytes must leave room for `{{}}`, not {max_bytes}")
        self._decoder = msgspec.json.Decoder(type_)
        self.type = type_
        self.what = what
        self.max_bytes = max_bytes

    def decode(self, data: bytes) -> T:
        if not data.strip():
            data = b"{}"
        return _decode(self._decoder, data, self.what, self.max_bytes)


def request_decoder(type_: type[T], verb: str) -> Decoder[T]:
    """The decoder of one verb's requests, capped at MAX_REQUEST_BYTES."""
    return Decoder(type_, f"{verb} request", max_bytes=MAX_REQUEST_BYTES)


class ReplyDecoder(Generic[T]):
    """Decodes a reply that is either `T` or an ErrorReply; raises the latter as FerryError.

    A reply that cannot be read is the replier's fault, not the asker's: it is
    raised as `internal` (with the same sentence a request would get), never as
    another exception."""

    def __init__(self, type_: type[T], what: str, *, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._decoder = msgspec.json.Decoder(type_ | ErrorReply)  # type: ignore[operator]
        self.type = type_
        self.what = what
        self.max_bytes = max_bytes

    def decode(self, data: bytes) -> T:
        try:
            reply = _decode(self._decoder, data, f"{self.what} reply", self.max_bytes)
        except FerryError as exc:
            raise FerryError(ErrorCode.INTERNAL, exc.message) from None
        if isinstance(reply, ErrorReply):
            raise FerryError(reply.code, reply.message)
        return reply
