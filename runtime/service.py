"""The error boundary of every request handler.

A handler takes a decoded request and returns a reply Struct. Whatever goes
wrong, the caller gets a reply: a FerryError becomes an ErrorReply (and the
micro-service error headers, so standard NATS tooling sees it too); anything
else is logged with its traceback and answered as `internal`, never with the
exception's repr. A request is read through the capped decoder path
(proto/codec.py), so malformed bytes are `bad_request`. A request without a
reply subject is handled all the same; its answer is logged as not sent.
"""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.micro.request import Request

from ferry.proto.codec import MAX_REQUEST_BYTES, Decoder, encode, refuse_oversized
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.subjects import caller_of

Req = TypeVar("Req")

# Requests a concurrent endpoint answers at once when its caller names no limit.
DEFAULT_CONCURRENCY_LIMIT = 16
# The request id a caller sends is logged; a longer one is cut.
REQUEST_ID_MAX = 64


def endpoint(
    decoder: Decoder[Req],
    handler: Callable[[Req], Awaitable[Any]],
    *,
    log: Any,
    verb: str,
    concurrent: bool = False,
    limit: int = DEFAULT_CONCURRENCY_LIMIT,
    with_caller: bool = False,
) -> Callable[[Request], Awaitable[None]]:
    """`concurrent`: answer each request in a task of its own. NATS hands one
    endpoint its requests one at a time; a verb that takes seconds (measuring a
    guest) would otherwise make the next caller wait behind it.

    `with_caller`: the handler also gets the caller's token from the subject
    (`ferry.api.<caller>.<verb>`, see proto/subjects.py).

    `limit` (concurrent endpoints): at most this many requests run at once; one
    more is answered `unavailable` at once, so a flood costs a bounded number of
    tasks, and the caller knows to try again later."""
    if limit < 1:
        raise ValueError(f"the {verb} endpoint needs a limit of at least 1, not {limit}")
    running: set[asyncio.Task] = set()

    async def handle_in_task(request: Request) -> None:
        if len(running) >= limit:
            busy = FerryError(
                ErrorCode.UNAVAILABLE,
                f"{limit} {verb} requests are being answered already, the most at once; try again when one has finished",
            )
            await _answer_error(request, busy, log.bind(verb=verb, request_id=_request_id(request)))
            return
        task = asyncio.create_task(handle(request))
        running.add(task)
        task.add_done_callback(running.discard)

    async def handle(request: Request) -> None:
        bound = log.bind(verb=verb, request_id=_request_id(request))
        try:
            refuse_oversized(request.data, MAX_REQUEST_BYTES, decoder.what)
            decoded = decoder.decode(request.data)
            # The caller as NATS proved it: the token of the subject it could publish on.
            answer = handler(decoded, caller_of(request.subject)) if with_caller else handler(decoded)
            reply = encode(await answer)
        except FerryError as exc:
            await _answer_error(request, exc, bound)
            return
        except Exception:
            bound.exception("request_failed")
            error = FerryError(ErrorCode.INTERNAL, f"the {verb} request failed inside the service; see its log")
            await _answer(request, encode(error.to_reply()), bound, error=error)
            return
        await _answer(request, reply, bound)

    return handle_in_task if concurrent else handle


def _request_id(request: Request) -> str:
    given = (request.headers or {}).get("Ferry-Request-Id")
    return str(given)[:REQUEST_ID_MAX] if given else uuid.uuid4().hex[:12]


async def _answer_error(request: Request, error: FerryError, log: Any) -> None:
    log.info("request_refused", code=error.code, reason=error.message)
    await _answer(request, encode(error.to_reply()), log, error=error)


async def _answer(request: Request, data: bytes, log: Any, *, error: FerryError | None = None) -> None:
    """Sends the answer; one that cannot be sent (no reply subject, connection
    closed) is logged, never raised: the endpoint keeps serving."""
    try:
        if error is None:
            await request.respond(data)
        else:
            await request.respond_error(error.code, error.message, data=data)
    except Exception as exc:
        log.warning("reply_not_sent", error=str(exc) or type(exc).__name__)
