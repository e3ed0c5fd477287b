"""The definitions of running VMs, kept in JetStream KV (bucket ferry_domains) so
that a VM can be started elsewhere once its host is dead: a dead host cannot be
asked for anything.

Each host's report carries a digest of every VM's persistent definition
(VmInfo.definition). The leader fetches a definition (`describe` with
`definition`) only when the digest or the VM's host differs from the copy it
holds, and forgets the copy of a VM no host reports any more. So a fleet that
changes nothing costs nothing but a comparison per changed report.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog
from nats.js import JetStreamContext

from ferry.coordinator.kv import TypedBucket, WatchedBucket, open_bucket
from ferry.coordinator.session_store import claim_key
from ferry.proto.agent import VmDescription
from ferry.proto.api import HostState, HostView
from ferry.proto.errors import FerryError
from ferry.proto.ha import DomainCopy
from ferry.proto.host import VmState

BUCKET = "ferry_domains"
# Definitions fetched at once (a first start over a large fleet fetches many).
FETCHES_AT_ONCE = 8
# Copies of VMs that no host reports are looked for this often.
FORGET_SECONDS = 60.0


async def open_domain_copies(js: JetStreamContext, *, replicas: int = 1) -> WatchedBucket[DomainCopy]:
    bucket = await open_bucket(js, BUCKET, "Ferry: VM definitions, to restart VMs of a dead host", replicas=replicas)
    return WatchedBucket(TypedBucket(bucket, DomainCopy, "domain copy"))


def stale(views: Iterable[HostView], held: Callable[[str], DomainCopy | None]) -> list[tuple[str, str]]:
    """(host, vm) whose copy is missing or differs from what the host reports. Pure."""
    found = []
    for view in views:
        if view.state == HostState.LOST:
            continue
        for vm in view.vms:
            if not vm.definition or vm.state == VmState.SHUTOFF:
                continue
            copy = held(vm.name)
            if copy is None or copy.digest != vm.definition or copy.host != view.host:
                found.append((view.host, vm.name))
    return found


def forgotten(copies: dict[str, DomainCopy], reported: Callable[[str], list[str]], known_hosts: set[str]) -> list[str]:
    """Keys of copies whose VM no host reports while its host does report. A copy whose
    host is lost or unknown stays: that is the copy a restart needs. Pure."""
    return [key for key, copy in copies.items() if copy.host in known_hosts and not reported(copy.vm)]


def copy_of(vm: VmDescription, host: str, at: float, local: Iterable[str]) -> DomainCopy:
    return DomainCopy(
        vm=vm.name, uuid=vm.uuid, host=host, digest=vm.definition, xml=vm.domain_xml, vcpus=vm.vcpus,
        memory_mib=vm.memory_mib, local_disks=sorted(local), attachments=list(vm.attachments), at=at,
    )


class DomainCopies:
    """The leader's keeping of the copies (`refresh` each sweep); `get` for anyone."""

    def __init__(
        self,
        records: WatchedBucket[DomainCopy],
        describe: Callable[[str, str], Awaitable[VmDescription]],
        *,
        locate: Callable[[str], list[str]],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._records = records
        self._describe = describe
        self._locate = locate
        self._wall = wall
        self._log = structlog.get_logger().bind(component="domain_copies")
        # The view objects already compared: a report that changed nothing is the same object.
        self._seen: dict[str, int] = {}
        self._fetching: set[str] = set()
        self._gate = asyncio.Semaphore(FETCHES_AT_ONCE)
        self._forgot_at = 0.0
        self._tasks: set[asyncio.Task] = set()

    def get(self, vm: str) -> DomainCopy | None:
        held = self._records.get(claim_key(vm))
        return held[0] if held is not None else None

    def of_host(self, host: str) -> list[DomainCopy]:
        return [copy for copy in self._records.values().values() if copy.host == host]

    def refresh(self, views: list[HostView]) -> None:
        """Start fetching what changed since the last look (returns at once)."""
        changed = [v for v in views if self._seen.get(v.host) != id(v)]
        self._seen = {v.host: id(v) for v in views}
        for host, vm in stale(changed, self.get):
            if vm not in self._fetching:
                self._fetching.add(vm)
                self._spawn(self._fetch(host, vm))
        now = self._wall()
        if now - self._forgot_at >= FORGET_SECONDS:
            self._forgot_at = now
            self._spawn(self._forget({v.host for v in views if v.state != HostState.LOST}))

    def _spawn(self, work) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, host: str, vm: str) -> None:
        try:
            async with self._gate:
                described = await self._describe(host, vm)
                if not described.domain_xml:
                    self._log.warning("definition_not_kept", host=host, vm=vm, reason="the agent sent no definition")
                    return
                local = [d.path for d in described.disks if d.local]
                await self._records.write(claim_key(vm), copy_of(described, host, self._wall(), local))
                self._log.info("definition_kept", host=host, vm=vm, digest=described.definition)
        except FerryError as exc:
            # Asked again when the host's next full report is a new view.
            self._seen.pop(host, None)
            self._log.warning("definition_not_fetched", host=host, vm=vm, reason=exc.message)
        except Exception:
            self._seen.pop(host, None)
            self._log.exception("definition_not_fetched", host=host, vm=vm)
        finally:
            self._fetching.discard(vm)

    async def _forget(self, up_hosts: set[str]) -> None:
        for key in forgotten(self._records.values(), self._locate, up_hosts):
            try:
                await self._records.remove(key)
            except Exception:
                self._log.exception("definition_not_forgotten", key=key)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
