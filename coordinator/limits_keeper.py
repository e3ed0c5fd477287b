"""The admission limits in force: the config file's, until changed through the API.

A change is kept in KV (bucket `ferry_settings`, key `limits`), so it outlives a
coordinator restart and every coordinator sees it: each follows the key with a
KV watch, and the leader reacts to a change whoever wrote it. `reset` returns
to the config file's values.
"""

from collections.abc import Callable

from ferry.coordinator.kv import TypedBucket, WatchedBucket
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.limits import Limits, LimitsReply, LimitsRequest, apply

BUCKET = "ferry_settings"
KEY = "limits"


class LimitsKeeper:
    def __init__(self, bucket: TypedBucket[Limits], configured: Limits) -> None:
        self._configured = configured
        self._listeners: list[Callable[[], None]] = []
        self._watched = WatchedBucket(bucket, on_change=self._changed)

    async def start(self) -> None:
        await self._watched.start()

    async def close(self) -> None:
        await self._watched.close()

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` after every change; returns how to stop listening."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _changed(self, key: str) -> None:
        if key == KEY:
            for listener in list(self._listeners):
                listener()

    def current(self) -> Limits:
        held = self._watched.get(KEY)
        return held[0] if held is not None else self._configured

    def reply(self) -> LimitsReply:
        runtime = self._watched.get(KEY) is not None
        return LimitsReply(limits=self.current(), source="runtime" if runtime else "config")

    async def change(self, request: LimitsRequest) -> LimitsReply:
        """Compare-and-set against the revision held; a change that lost a race is
        refused rather than applied to limits nobody saw."""
        store = self._watched.store
        held = self._watched.get(KEY)
        if request.reset:
            await self._watched.remove(KEY)
        elif request != LimitsRequest():
            updated = apply(self.current(), request)
            if held is None:
                try:
                    revision = await store.create(KEY, updated)
                except FerryError as exc:
                    raise FerryError(ErrorCode.CONFLICT, "the limits changed meanwhile; read them and try again") from exc
            else:
                revision = await store.put_if(KEY, updated, held[1])
            self._watched.saw(KEY, updated, revision)
        return self.reply()
