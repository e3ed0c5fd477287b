"""The error boundary of every verb (runtime/service.py), without NATS: a request
stand-in records what the endpoint answered."""

import asyncio

import msgspec
import pytest
import structlog

from ferry.proto.agent import MeasureRequest
from ferry.proto.codec import MAX_REQUEST_BYTES, request_decoder
from ferry.proto.errors import ErrorCode, ErrorReply, FerryError
from ferry.runtime.service import endpoint

LOG = structlog.get_logger()


class Request:
    """What nats.micro hands an endpoint; `reply=""` is a request without a reply subject."""

    def __init__(self, data: bytes, *, reply: str = "_INBOX.1") -> None:
        self.data = data
        self.headers: dict[str, str] | None = None
        self.reply = reply
        self.answers: list[tuple[str | None, bytes]] = []

    async def respond(self, data: bytes = b"", headers=None) -> None:
        if not self.reply:
            raise ValueError("no reply subject set")  # as nats.micro does
        self.answers.append(((headers or {}).get("Nats-Service-Error-Code"), data))

    async def respond_error(self, code: str, description: str, data: bytes = b"", headers=None) -> None:
        await self.respond(data, headers={"Nats-Service-Error-Code": code, "Nats-Service-Error": description})

    def error(self) -> ErrorReply:
        (code, data), = self.answers
        reply = msgspec.json.decode(data, type=ErrorReply)
        assert reply.code == code
        return reply


async def vm_name(request: MeasureRequest) -> dict:
    return {"vm": request.vm}


def measure_endpoint(handler=vm_name, **options):
    return endpoint(request_decoder(MeasureRequest, "measure request"), handler, log=LOG, verb="measure", **options)


@pytest.mark.parametrize(
    "data",
    [b"[" * 100_000, b'{"vm":' + b"9" * 400 + b"}", b'{"vm":"' + b"a" * 900_000 + b'"}', b"\xff", b'{"vm":5}'],
)
async def test_malformed_requests_are_answered_bad_request(data):
    request = Request(data)
    await measure_endpoint()(request)
    assert request.error().code == ErrorCode.BAD_REQUEST


async def test_the_request_cap_holds_whatever_decoder_the_endpoint_was_given():
    from ferry.proto.codec import Decoder

    request = Request(b'{"vm":"' + b"a" * MAX_REQUEST_BYTES + b'"}')
    await endpoint(Decoder(MeasureRequest, "measure request"), vm_name, log=LOG, verb="measure")(request)
    assert request.error() == ErrorReply(
        code="bad_request", message=f"measure request is {MAX_REQUEST_BYTES + 9} bytes, more than the {MAX_REQUEST_BYTES} accepted"
    )


async def test_a_request_is_answered():
    request = Request(b'{"vm":"web"}')
    await measure_endpoint()(request)
    assert request.answers == [(None, b'{"vm":"web"}')]


async def test_an_unexpected_failure_is_internal_without_its_repr():
    async def broken(request):
        raise KeyError("secret detail")

    request = Request(b'{"vm":"web"}')
    await measure_endpoint(broken)(request)
    assert request.error() == ErrorReply(code="internal", message="the measure request failed inside the service; see its log")


async def test_a_reply_that_cannot_be_encoded_is_internal():
    async def unencodable(request):
        return object()

    request = Request(b'{"vm":"web"}')
    await measure_endpoint(unencodable)(request)
    assert request.error().code == ErrorCode.INTERNAL


@pytest.mark.parametrize("data", [b'{"vm":"web"}', b"[[[", b'{"vm":5}'])
async def test_a_request_without_a_reply_subject_is_handled_and_nothing_is_raised(data):
    handled = []

    async def remember(request):
        handled.append(request.vm)
        return {}

    request = Request(data, reply="")
    await measure_endpoint(remember)(request)
    assert request.answers == [] and handled == (["web"] if data == b'{"vm":"web"}' else [])


async def test_a_failing_handler_without_a_reply_subject_raises_nothing():
    async def refuses(request):
        raise FerryError(ErrorCode.CONFLICT, "no")

    await measure_endpoint(refuses)(Request(b'{"vm":"web"}', reply=""))


async def test_a_concurrent_endpoint_answers_unavailable_beyond_its_limit():
    release = asyncio.Event()
    started = []

    async def slow(request):
        started.append(request.vm)
        await release.wait()
        return {"vm": request.vm}

    handle = measure_endpoint(slow, concurrent=True, limit=2)
    requests = [Request(f'{{"vm":"g{i}"}}'.encode()) for i in range(4)]
    for request in requests:
        await handle(request)
    await asyncio.sleep(0)
    assert started == ["g0", "g1"]
    for request in requests[2:]:
        assert request.error() == ErrorReply(
            code="unavailable",
            message="2 measure requests are being answered already, the most at once; try again when one has finished",
        )
    release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert [r.answers for r in requests[:2]] == [[(None, b'{"vm":"g0"}')], [(None, b'{"vm":"g1"}')]]

    later = Request(b'{"vm":"g5"}')  # the slots are free again
    await handle(later)
    for _ in range(3):
        await asyncio.sleep(0)
    assert later.answers == [(None, b'{"vm":"g5"}')]


def test_a_limit_below_one_is_refused_when_the_endpoint_is_built():
    with pytest.raises(ValueError) as caught:
        measure_endpoint(concurrent=True, limit=0)
    assert str(caught.value) == "the measure endpoint needs a limit of at least 1, not 0"
