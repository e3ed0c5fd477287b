"""Fencing lost hosts, and the record of it in JetStream KV (bucket ferry_fences).

A host is fenced when its peers could not reach its libvirtd (host_death.py):
the leader runs its fence device (fencing.py) and records the outcome under
the host's name. Only `fenced` (the device confirmed off) and
`confirmed_dead` (an operator checked by hand: `ferry host confirm-dead`)
let anything of that host start elsewhere; `failed` says loudly why not.

Nothing is fenced when more of the cluster is lost at once than
`fencing.max_lost_share`: that is what the coordinator's own network failing
looks like, and powering off half the cluster would be the outage.
"""

import asyncio
import time
from collections.abc import Callable, Iterable

import msgspec
from nats.js import JetStreamContext

from ferry.coordinator.config import FencingSettings
from ferry.coordinator.fencing import fence_off
from ferry.coordinator.kv import TypedBucket, WatchedBucket, open_bucket
from ferry.proto.api import HostState, HostView
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.events import HostFenced, HostNotFenced
from ferry.proto.ha import FenceRecord, FenceReply, FenceState

BUCKET = "ferry_fences"


async def open_fence_records(js: JetStreamContext, *, replicas: int = 1) -> WatchedBucket[FenceRecord]:
    bucket = await open_bucket(js, BUCKET, "Ferry: lost hosts fenced (or not), and by whom", replicas=replicas)
    return WatchedBucket(TypedBucket(bucket, FenceRecord, "fence record"))


def fence_refusal(host: str, views: Iterable[HostView], settings: FencingSettings) -> str | None:
    """Why `host` is not fenced now (a sentence), or None. Pure."""
    if not settings.enabled:
        return "fencing is off (fencing.enabled in coordinator.toml)"
    if host not in settings.devices:
        return f"no fence device is configured for {host} ([fencing.devices.\"{host}\"] in coordinator.toml)"
    listed = list(views)
    lost = sum(1 for v in listed if v.state == HostState.LOST)
    if listed and lost / len(listed) > settings.max_lost_share:
        return (
            f"{lost} of {len(listed)} hosts are lost at once, more than fencing.max_lost_share "
            f"({settings.max_lost_share:g}): that looks like the coordinator's network, not dead hosts"
        )
    return None


def fenced_marks(records: WatchedBucket[FenceRecord]) -> dict[str, str]:
    """Hosts fenced (or confirmed dead) and not yet let back by an operator, with why
    they stay out of placement. Pure over the watched records."""
    return {
        host: f"fenced: {record.reason}; `ferry undrain {host}` lets VMs be placed there again"
        for host, record in records.values().items()
        if record.state.dead
    }


def _last_heard(host: str, views: list[HostView], now: float) -> float:
    """When the host was last heard from (wall clock): restart times count from there."""
    view = next((v for v in views if v.host == host), None)
    return round(now - view.last_seen_age, 3) if view is not None else now


def _not_fenced(host: str, why: str) -> str:
    return f"{host} is not fenced: {why}; none of its VMs is started elsewhere (ferry host confirm-dead {host} after checking by hand)"


class Fencer:
    """The leader's fencing: run the device, record the outcome, say it."""

    def __init__(
        self, records: WatchedBucket[FenceRecord], settings: FencingSettings, *, wall: Callable[[], float] = time.time
    ) -> None:
        self._records = records
        self._settings = settings
        self._wall = wall
        self._lock = asyncio.Lock()

    def record(self, host: str) -> FenceRecord | None:
        held = self._records.get(host)
        return held[0] if held is not None else None

    async def fence(self, host: str, views: list[HostView]) -> HostFenced | HostNotFenced:
        refusal = fence_refusal(host, views, self._settings)
        if refusal is not None:
            record = FenceRecord(host=host, state=FenceState.FAILED, reason=_not_fenced(host, refusal), at=self._wall())
        else:
            device = self._settings.devices[host]
            result = await fence_off(host, device, tuple(self._settings.agent_dirs))
            state = FenceState.FENCED if result.confirmed_off else FenceState.FAILED
            reason = result.reason if result.confirmed_off else _not_fenced(host, result.reason)
            record = FenceRecord(host=host, state=state, reason=reason, by=device.agent, at=self._wall(),
                                 seconds=round(result.seconds, 3), lost_at=_last_heard(host, views, self._wall()))
        await self._write(record)
        if record.state.dead:
            return HostFenced(host=host, by=record.by, reason=record.reason, seconds=record.seconds)
        return HostNotFenced(host=host, reason=record.reason)

    async def confirm_dead(self, host: str, views: list[HostView], *, by: str, reason: str = "") -> tuple[FenceReply, HostFenced]:
        view = next((v for v in views if v.host == host), None)
        if view is None:
            raise FerryError(ErrorCode.UNKNOWN_HOST, f"no host named {host} has reported to the coordinator")
        if view.state != HostState.LOST:
            raise FerryError(
                ErrorCode.CONFLICT,
                f"{host} is {view.state}: its agent reports, so it is not dead; only a lost host can be confirmed dead",
            )
        said = f"{by or 'an operator'} confirmed {host} is off" + (f": {reason}" if reason else "")
        record = FenceRecord(host=host, state=FenceState.CONFIRMED_DEAD, reason=said, by=by, at=self._wall(),
                             lost_at=_last_heard(host, views, self._wall()))
        await self._write(record)
        return FenceReply(record=record), HostFenced(host=host, by=by, reason=said)

    def dead_hosts(self) -> set[str]:
        """Hosts fenced (or confirmed dead) and not let back yet."""
        return {host for host, r in self._records.values().items() if r.state.dead}

    def dead_unplanned(self) -> list[str]:
        """Hosts fenced (or confirmed dead) whose restarts were not recorded yet."""
        return [host for host, r in self._records.values().items() if r.state.dead and not r.restarts_planned]

    async def planned(self, host: str) -> None:
        """Its restarts are recorded: a later leader does not plan them again."""
        async with self._lock:
            record = self.record(host)
            if record is not None and not record.restarts_planned:
                await self._records.write(host, msgspec.structs.replace(record, restarts_planned=True))

    async def clear(self, host: str) -> FenceRecord | None:
        """Forget the host's fence (`ferry undrain`): it may take VMs again. The record, or None."""
        async with self._lock:
            return await self._records.remove(host)

    async def _write(self, record: FenceRecord) -> None:
        async with self._lock:
            await self._records.write(record.host, record)
