"""The one encode/decode path. Wire format: JSON (readable with `nats sub`)."""

from typing import Any, Generic, TypeVar

import msgspec

from ferry.proto.errors import ErrorCode, ErrorReply, FerryError
from ferry.proto.names import PATTERN_MEANINGS

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_REGEX_WORDS = {f"`str` matching regex {pattern!r}": meaning for pattern, meaning in PATTERN_MEANINGS.items()}


def readable(error: msgspec.ValidationError) -> str:
    """msgspec's message with the regexes it names replaced by what they mean."""
    message = str(error)
    for words, meaning in _REGEX_WORDS.items():
        message = message.replace(words, meaning)
    return message


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


class Decoder(Generic[T]):
    """A typed decoder built once; any bad input becomes FerryError(bad_request).

    An empty payload decodes as `{}` so that requests without arguments can be
    sent with no body (`nats req ferry.api.hosts ''`).
    """

    def __init__(self, type_: type[T], what: str) -> None:
        self._decoder = msgspec.json.Decoder(type_)
        self._what = what

    def decode(self, data: bytes) -> T:
        if not data.strip():
            data = b"{}"
        try:
            return self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise FerryError(ErrorCode.BAD_REQUEST, f"invalid {self._what}: {readable(exc)}") from None
        except msgspec.DecodeError as exc:
            raise FerryError(
                ErrorCode.BAD_REQUEST, f"{self._what} is not valid JSON ({exc})"
            ) from None


class ReplyDecoder(Generic[T]):
    """Decodes a reply that is either `T` or an ErrorReply; raises the latter as FerryError."""

    def __init__(self, type_: type[T], what: str) -> None:
        self._decoder = msgspec.json.Decoder(type_ | ErrorReply)  # type: ignore[operator]
        self._what = what

    def decode(self, data: bytes) -> T:
        try:
            reply = self._decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise FerryError(
                ErrorCode.INTERNAL, f"could not read the {self._what} reply: {exc}"
            ) from None
        if isinstance(reply, ErrorReply):
            raise FerryError(reply.code, reply.message)
        return reply
