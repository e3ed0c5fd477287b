"""At most one action per key per period, in bounded memory. Pure: time is an argument."""

from collections import OrderedDict


class RateLimit:
    def __init__(self, period: float, *, capacity: int) -> None:
        self._period = period
        self._capacity = capacity
        # Key -> when it last acted, oldest first.
        self._last: OrderedDict[str, float] = OrderedDict()

    def due(self, key: str, now: float) -> bool:
        """Whether `key` may act now (and if so, it is counted as acting)."""
        last = self._last.get(key)
        if last is not None and now - last < self._period:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        # Keys nobody has heard of for a period are forgotten first: names that
        # are new every time (forged or not) cost at most `capacity` entries.
        while len(self._last) > self._capacity or now - next(iter(self._last.values())) >= self._period:
            self._last.popitem(last=False)
        return True
