"""Cordons: hosts no new VM is placed on, while what they run stays (`ferry cordon`).

The record in JetStream KV under the host's name is the mark, read by every
coordinator through a KV watch (as drain records are). Placement leaves a
cordoned host out through its facts (coordinator/placement.py `host_cordoned`),
so new sessions, drains and evacuations never pick it; a destination named
with `--to` is refused here. Only the leader writes, each write a
compare-and-set on the revision the watched records hold.
"""

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping

import msgspec
from nats.js import JetStreamContext

from ferry.coordinator.kv import TypedBucket, WatchedBucket, open_bucket
from ferry.proto.api import Cordon, CordonReply, CordonRequest, HostView, RefusalCode
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.events import HostCordoned, HostUncordoned

BUCKET = "ferry_cordons"


async def open_cordon_records(js: JetStreamContext, *, replicas: int = 1) -> WatchedBucket[Cordon]:
    bucket = await open_bucket(js, BUCKET, "Ferry: cordoned hosts (no new VMs placed there)", replicas=replicas)
    return WatchedBucket(TypedBucket(bucket, Cordon, "cordon"))


def with_cordons(views: Iterable[HostView], cordons: Mapping[str, Cordon]) -> list[HostView]:
    """The hosts with the cordon marks KV holds. Pure."""
    return [
        msgspec.structs.replace(v, cordoned=True, cordon=cordons[v.host]) if v.host in cordons else v for v in views
    ]


def refuse_cordoned_dest(dest: str, hosts: Iterable[HostView]) -> None:
    """A destination named with `--to` that is cordoned is refused (placement
    never picks one; a named one would go around it). Pure."""
    view = next((h for h in hosts if h.host == dest), None)
    if view is None or not view.cordoned:
        return
    why = f" ({view.cordon.reason})" if view.cordon is not None and view.cordon.reason else ""
    raise FerryError(
        RefusalCode.HOST_CORDONED,
        f"the destination {dest} is cordoned{why}: no new VMs are placed there (ferry uncordon {dest} allows them again)",
    )


class Cordons:
    """The leader's writes of cordon records."""

    def __init__(self, records: WatchedBucket[Cordon], *, wall: Callable[[], float] = time.time) -> None:
        self._records = records
        self._wall = wall
        self._lock = asyncio.Lock()

    async def cordon(
        self, request: CordonRequest, known: Iterable[str], *, by: str = ""
    ) -> tuple[CordonReply, HostCordoned | None]:
        """The reply, and the event to announce (None when the host was cordoned already)."""
        if request.host not in set(known):
            raise FerryError(ErrorCode.UNKNOWN_HOST, f"no host named {request.host} has reported to the coordinator")
        async with self._lock:
            held = self._records.get(request.host)
            if held is not None:
                # Cordoning twice has the effect of cordoning once: the first record (who, why, when) stays.
                return CordonReply(cordon=held[0], changed=False), None
            cordon = Cordon(host=request.host, reason=request.reason, by=by, at=self._wall())
            await self._records.write(request.host, cordon)
        return CordonReply(cordon=cordon), HostCordoned(host=cordon.host, reason=cordon.reason, by=by)

    async def uncordon(self, host: str, *, by: str = "") -> tuple[CordonReply, HostUncordoned]:
        async with self._lock:
            held = self._records.get(host)
            if held is None:
                raise FerryError(ErrorCode.NOT_FOUND, f"{host} is not cordoned")
            cordon = held[0]
            await self._records.remove(host)
        return CordonReply(cordon=cordon), HostUncordoned(host=host, by=by)
