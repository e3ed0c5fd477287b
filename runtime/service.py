"""The error boundary of every request handler.

A handler takes a decoded request and returns a reply Struct. Whatever goes
wrong, the caller gets a reply: a FerryError becomes an ErrorReply (and the
micro-service error headers, so standard NATS tooling sees it too); anything
else is logged with its traceback and answered as `internal`, never with the
exception's repr.
"""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.micro.request import Request

from ferry.proto.codec import Decoder, encode
from ferry.proto.errors import ErrorCode, FerryError

Req = TypeVar("Req")

def endpoint(
    decoder: Decoder[Req],
    handler: Callable[[Req], Awaitable[Any]],
    *,
    log: Any,
    verb: str,
    concurrent: bool = False,
) -> Callable[[Request], Awaitable[None]]:
    """`concurrent`: answer each request in a task of its own. NATS hands one
    endpoint its requests one at a time; a verb that takes seconds (measuring a
    guest) would otherwise make the next caller wait behind it."""
    running: set[asyncio.Task] = set()

    async def handle_in_task(request: Request) -> None:
        task = asyncio.create_task(handle(request))
        running.add(task)
        task.add_done_callback(running.discard)

    async def handle(request: Request) -> None:
        request_id = (request.headers or {}).get("Ferry-Request-Id") or uuid.uuid4().hex[:12]
        bound = log.bind(verb=verb, request_id=request_id)
        try:
            reply = await handler(decoder.decode(request.data))
        except FerryError as exc:
            bound.info("request_refused", code=exc.code, reason=exc.message)
            await request.respond_error(
                exc.code, exc.message, data=encode(exc.to_reply())
            )
            return
        except Exception:
            bound.exception("request_failed")
            error = FerryError(
                ErrorCode.INTERNAL, f"the {verb} request failed inside the service; see its log"
            )
            await request.respond_error(error.code, error.message, data=encode(error.to_reply()))
            return
        await request.respond(encode(reply))

    return handle_in_task if concurrent else handle


