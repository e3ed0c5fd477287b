"""The admission limits in force: the config file's, until changed through the API.

A change is kept in KV, so it outlives a coordinator restart; `reset` returns
to the config file's values.
"""

from nats.js import JetStreamContext

from ferry.coordinator.kv import TypedBucket, open_bucket
from ferry.proto.limits import Limits, LimitsReply, LimitsRequest, apply

BUCKET = "ferry_settings"
KEY = "limits"


class LimitsKeeper:
    def __init__(self, bucket: TypedBucket[Limits], configured: Limits, stored: Limits | None) -> None:
        self._bucket = bucket
        self._configured = configured
        self._current = stored or configured
        self._runtime = stored is not None

    @classmethod
    async def open(cls, js: JetStreamContext, configured: Limits) -> "LimitsKeeper":
        bucket = TypedBucket(await open_bucket(js, BUCKET, "Ferry: settings changed at runtime"), Limits, "setting")
        found = await bucket.find(KEY)
        return cls(bucket, configured, found[0] if found else None)

    def current(self) -> Limits:
        return self._current

    def reply(self) -> LimitsReply:
        return LimitsReply(limits=self._current, source="runtime" if self._runtime else "config")

    async def change(self, request: LimitsRequest) -> LimitsReply:
        if request.reset:
            await self._bucket.delete(KEY)
            self._current, self._runtime = self._configured, False
        elif request != LimitsRequest():
            updated = apply(self._current, request)
            await self._bucket.put(KEY, updated)
            self._current, self._runtime = updated, True
        return self.reply()
