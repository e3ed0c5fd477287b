"""HA policies: each VM's restart priority and the cluster default, in JetStream KV.

Read by every coordinator through a KV watch (as cordons are), written by the
leader only, each write a compare-and-set on the revision the watch holds. The
key of a VM's policy is its claim key (any VM name is a valid key that way);
the default sits under its own key, and is `off` until an operator sets it.
"""

import asyncio
import time
from collections.abc import Callable, Iterable

from nats.js import JetStreamContext

from ferry.coordinator.kv import TypedBucket, WatchedBucket, open_bucket
from ferry.coordinator.session_store import claim_key
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.events import HaPolicySet
from ferry.proto.ha import HaPolicy, HaPriority, HaReply

BUCKET = "ferry_ha"
DEFAULT_KEY = "cluster.default"
# Until an operator sets a default, no VM is restarted that nobody marked.
BUILT_IN_DEFAULT = HaPolicy(priority=HaPriority.OFF)


async def open_ha_records(js: JetStreamContext, *, replicas: int = 1) -> WatchedBucket[HaPolicy]:
    bucket = await open_bucket(js, BUCKET, "Ferry: HA restart priority per VM, and the cluster default", replicas=replicas)
    return WatchedBucket(TypedBucket(bucket, HaPolicy, "HA policy"))


class HaPolicies:
    """Reads from the watched records; the leader's writes."""

    def __init__(self, records: WatchedBucket[HaPolicy], *, wall: Callable[[], float] = time.time) -> None:
        self._records = records
        self._wall = wall
        self._lock = asyncio.Lock()

    def default(self) -> HaPolicy:
        held = self._records.get(DEFAULT_KEY)
        return held[0] if held is not None else BUILT_IN_DEFAULT

    def of(self, vm: str) -> HaPolicy:
        """The VM's own policy, else the default with the VM named."""
        held = self._records.get(claim_key(vm))
        if held is not None:
            return held[0]
        default = self.default()
        return HaPolicy(priority=default.priority, vm=vm, by=default.by, at=default.at, from_default=True)

    def read(self, vms: Iterable[str]) -> HaReply:
        named = list(vms)
        if named:
            return HaReply(default=self.default(), policies=[self.of(vm) for vm in named])
        own = [p for key, p in self._records.values().items() if key != DEFAULT_KEY]
        return HaReply(default=self.default(), policies=sorted(own, key=lambda p: p.vm))

    async def set(self, vm: str, priority: HaPriority, *, known: bool, by: str = "") -> tuple[HaReply, HaPolicySet | None]:
        """`known`: whether a host reports the VM (a policy for a name nobody runs is a typo until proven otherwise)."""
        if not known:
            raise FerryError(ErrorCode.UNKNOWN_VM, f"no host reports a VM named {vm}; set its HA policy once it runs")
        return await self._write(claim_key(vm), HaPolicy(priority=priority, vm=vm, by=by, at=self._wall()))

    async def set_default(self, priority: HaPriority, *, by: str = "") -> tuple[HaReply, HaPolicySet | None]:
        return await self._write(DEFAULT_KEY, HaPolicy(priority=priority, by=by, at=self._wall()))

    async def _write(self, key: str, policy: HaPolicy) -> tuple[HaReply, HaPolicySet | None]:
        async with self._lock:
            held = self._records.get(key)
            if held is not None and held[0].priority == policy.priority:
                # The same priority again changes nothing: who set it first, and when, stays.
                return HaReply(default=self.default(), policies=[held[0]] if policy.vm else [], changed=False), None
            await self._records.write(key, policy)
        event = HaPolicySet(vm=policy.vm, priority=policy.priority, by=policy.by)
        return HaReply(default=self.default(), policies=[policy] if policy.vm else []), event
