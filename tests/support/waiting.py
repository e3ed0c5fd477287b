import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], *, timeout: float, every: float = 0.1, what: str = "condition"
) -> T:
    """Poll `probe` until it returns something truthy; fail with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = await probe()
        except Exception as exc:  # the thing polled may not be up yet
            last = exc
        if last and not isinstance(last, Exception):
            return last  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s; last: {last!r}")
        await asyncio.sleep(every)


async def session_end(client, session_id: str, timeout: float = 30.0):
    """The session once it has ended (completed, failed or cancelled)."""

    async def ended():
        session = await client.session(session_id)
        return session if session.state.terminal else None

    return await eventually(ended, timeout=timeout, every=0.1, what=f"session {session_id} ended")
