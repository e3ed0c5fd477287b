"""A client of the coordinator API, for the CLI, tests and scripts."""

import uuid
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client

from proto import subjects
from proto.api import HostsReply, HostsRequest
from proto.codec import ReplyDecoder, encode
from proto.errors import ErrorCode, FerryError
from runtime.config import NatsSettings
from runtime.connection import connect_once

T = TypeVar("T")

_HOSTS = ReplyDecoder(HostsReply, "hosts")


class FerryClient:
    def __init__(self, nc: Client, *, timeout: float = 5.0) -> None:
        self._nc = nc
        self._timeout = timeout

    @classmethod
    async def connect(cls, settings: NatsSettings) -> "FerryClient":
        try:
            nc = await connect_once(settings, name="ferry-cli")
        except Exception as exc:
            raise FerryError(
                ErrorCode.UNAVAILABLE,
                f"cannot reach NATS at {', '.join(settings.servers)} ({str(exc) or type(exc).__name__})",
            ) from None
        return cls(nc, timeout=settings.request_timeout)

    async def close(self) -> None:
        if not self._nc.is_closed:
            await self._nc.close()

    async def __aenter__(self) -> "FerryClient":
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        await self.close()

    async def request_raw(self, verb: str, payload: bytes) -> bytes:
        subject = subjects.api(verb)
        try:
            msg = await self._nc.request(
                subject, payload, timeout=self._timeout, headers={"Ferry-Request-Id": uuid.uuid4().hex[:12]}
            )
        except nats.errors.NoRespondersError:
            raise FerryError(
                ErrorCode.UNAVAILABLE, f"no coordinator is running (nobody answers {subject})"
            ) from None
        except nats.errors.TimeoutError:
            raise FerryError(
                ErrorCode.TIMEOUT, f"the coordinator did not answer {subject} within {self._timeout:g} s"
            ) from None
        return msg.data

    async def hosts(self, request: HostsRequest = HostsRequest()) -> HostsReply:
        return _HOSTS.decode(await self.request_raw("hosts", encode(request)))
