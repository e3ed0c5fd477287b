"""Loops that react to news and still look again now and then."""

import asyncio


async def woken(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` have passed; the event is cleared for the next round."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except TimeoutError:
        pass
    event.clear()
