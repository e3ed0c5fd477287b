"""Destination choice. Pure: hosts and a VM in, a ranking with reasons out.

Every host that is not chosen gets a rejection with a code and a sentence, so
an operator can see why a VM did not go where they expected.
"""

import functools
from dataclasses import dataclass, field, replace

from ferry.proto.host import HealthState, version_tuple
from ferry.proto.network import Attachment, HostNetworks, NetworkOffer, missing_attachments


@dataclass(frozen=True, slots=True)
class HostFacts:
    name: str
    up: bool
    health: HealthState
    cpus: int
    vcpus_used: int
    memory_total_mib: int
    memory_free_mib: int
    memory_used_mib: int
    libvirt_version: str
    qemu_version: str
    arch: str = "x86_64"
    draining: bool = False
    # Cordoned by an operator: nothing new goes there, what runs there stays.
    cordoned: bool = False
    # Held by sessions that are preparing or migrating towards this host.
    reserved_vcpus: int = 0
    reserved_memory_mib: int = 0
    # Shared storage this host reaches (for example the mount points of shared pools).
    storage: frozenset[str] = frozenset()
    # What it offers VMs' interfaces; None when its agent does not say (prepare judges then).
    networks: HostNetworks | NetworkOffer | None = None

    def holding(self, vcpus: int, memory_mib: int) -> "HostFacts":
        """These facts with room held for `vcpus` and `memory_mib` more (a VM on its way here)."""
        return replace(
            self, reserved_vcpus=self.reserved_vcpus + vcpus, reserved_memory_mib=self.reserved_memory_mib + memory_mib
        )


@dataclass(frozen=True)
class VmDemand:
    name: str
    source: str
    vcpus: int
    memory_mib: int
    libvirt_version: str
    qemu_version: str
    arch: str = "x86_64"
    shared_storage: frozenset[str] = frozenset()
    local_disks: bool = False
    # What its interfaces need on the destination.
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class PlacementRules:
    cpu_allocation_ratio: float = 4.0
    # Memory a host keeps beyond what the VM itself needs (QEMU overhead, page cache).
    memory_margin_mib: int = 128
    allow_storage_copy: bool = True


@dataclass(frozen=True)
class Rejection:
    host: str
    code: str
    reason: str


@dataclass(frozen=True)
class Ranking:
    choices: list[tuple[str, float]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def best(self) -> str | None:
        return self.choices[0][0] if self.choices else None


def available_memory_mib(host: HostFacts) -> int:
    """What is left for a new VM: the lower of what the kernel says is free and what
    the VMs' sizes leave, minus reservations (a VM's memory is not all touched yet)."""
    by_accounting = host.memory_total_mib - host.memory_used_mib
    return min(host.memory_free_mib, by_accounting) - host.reserved_memory_mib


@functools.lru_cache(maxsize=4096)
def _older(version: str, than: str) -> bool:
    return version_tuple(version) < version_tuple(than)


def reject_reason(vm: VmDemand, host: HostFacts, rules: PlacementRules) -> Rejection | None:
    judged = judge(vm, host, rules)
    return judged if isinstance(judged, Rejection) else None


def judge(vm: VmDemand, host: HostFacts, rules: PlacementRules) -> Rejection | float:
    """Why `host` cannot take `vm`, or how good a choice it is (`score`): one pass
    over the host, as placement makes thousands of them per VM."""

    no = functools.partial(Rejection, host.name)
    if host.name == vm.source:
        return no("same_host", f"{host.name} is where {vm.name} runs now")
    if not host.up:
        return no("host_lost", f"{host.name} is lost (no heartbeat)")
    if host.draining:
        return no("host_draining", f"{host.name} is draining: no new VMs are placed there")
    if host.cordoned:
        return no("host_cordoned", f"{host.name} is cordoned: no new VMs are placed there")
    if host.health != HealthState.OK:
        return no("host_unhealthy", f"{host.name} health is {host.health}")
    if host.arch != vm.arch:
        return no("arch_mismatch", f"{host.name} is {host.arch}, {vm.name} needs {vm.arch}")
    if _older(host.libvirt_version, vm.libvirt_version):
        return no(
            "version_older", f"{host.name} runs libvirt {host.libvirt_version}, older than {vm.libvirt_version} on {vm.source}"
        )
    if _older(host.qemu_version, vm.qemu_version):
        return no("version_older", f"{host.name} runs QEMU {host.qemu_version}, older than {vm.qemu_version} on {vm.source}")
    if host.networks is not None and vm.attachments and (missing := missing_attachments(vm.attachments, host.networks)):
        return no("network_missing", f"{host.name} lacks what {vm.name}'s interfaces need: {'; '.join(missing)}")
    need = vm.memory_mib + rules.memory_margin_mib
    have = available_memory_mib(host)
    if have < need:
        return no("no_capacity", f"{host.name} has {max(have, 0)} MiB free for VMs, {vm.name} needs {need} MiB")
    vcpu_limit = int(host.cpus * rules.cpu_allocation_ratio)
    vcpus_after = host.vcpus_used + host.reserved_vcpus + vm.vcpus
    if vcpus_after > vcpu_limit:
        return no(
            "no_capacity",
            f"{host.name} would have {vcpus_after} vCPUs on {host.cpus} CPUs (limit {vcpu_limit})",
        )
    unreachable = vm.shared_storage - host.storage
    if (unreachable or vm.local_disks) and not rules.allow_storage_copy:
        what = f"storage {', '.join(sorted(unreachable))}" if unreachable else "local disks"
        return no(
            "storage_unreachable",
            f"{host.name} does not reach {vm.name}'s {what} and storage copy is not allowed",
        )
    return _score(vm, host, rules, have, unreachable)


def score(vm: VmDemand, host: HostFacts, rules: PlacementRules) -> float:
    """Higher is better: spread load by preferring the host with the most room left."""
    return _score(vm, host, rules, available_memory_mib(host), vm.shared_storage - host.storage)


def _score(vm: VmDemand, host: HostFacts, rules: PlacementRules, available_mib: int, unreachable: frozenset[str]) -> float:
    return room_score(
        available_mib, host.memory_total_mib, host.vcpus_used + host.reserved_vcpus, host.cpus * rules.cpu_allocation_ratio,
        vm.memory_mib, vm.vcpus, copies=bool(unreachable),
    )


def room_score(
    available_mib: int, total_mib: int, vcpus_held: int, vcpu_limit: float, memory_mib: int, vcpus: int, *, copies: bool
) -> float:
    """The score of a host that can take the VM: the share of its memory and of its
    vCPU allowance left after it, and whether its disks need no copy."""
    # Shared storage beats copying disks: less data to move.
    return round(
        0.6 * (available_mib - memory_mib) / (total_mib if total_mib > 1 else 1)
        + 0.3 * (vcpu_limit - vcpus_held - vcpus) / (vcpu_limit if vcpu_limit > 1 else 1)
        + (0.0 if copies else 0.1),
        6,
    )


def rank(vm: VmDemand, hosts: list[HostFacts], rules: PlacementRules = PlacementRules()) -> Ranking:
    """Every host judged as `judge` does, in one tight pass: thousands of hosts
    per placement. What depends only on the host's software and networks is
    judged once per kind of host; a sentence is written only for a host that
    is turned down (`judge` writes it)."""
    choices, rejections = [], []
    need = vm.memory_mib + rules.memory_margin_mib
    ratio, copy_ok, shared, local = rules.cpu_allocation_ratio, rules.allow_storage_copy, vm.shared_storage, vm.local_disks
    source, arch, libvirt_v, qemu_v, needs, vcpus, memory = (
        vm.source, vm.arch, vm.libvirt_version, vm.qemu_version, vm.attachments, vm.vcpus, vm.memory_mib
    )
    # (libvirt, QEMU, what the host's networks offer) -> whether the VM can run there at all.
    kinds: dict[tuple, bool] = {}
    ok = HealthState.OK
    for h in hosts:
        if h.name == source or not h.up or h.draining or h.cordoned or h.health != ok or h.arch != arch:
            rejections.append(judge(vm, h, rules))
            continue
        offer = h.networks if needs else None
        kind = (h.libvirt_version, h.qemu_version, offer.key if isinstance(offer, NetworkOffer) else id(offer))
        fits = kinds.get(kind)
        if fits is None:
            fits = kinds[kind] = not (
                _older(h.libvirt_version, libvirt_v)
                or _older(h.qemu_version, qemu_v)
                or (offer is not None and bool(missing_attachments(needs, offer)))
            )
        have = min(h.memory_free_mib, h.memory_total_mib - h.memory_used_mib) - h.reserved_memory_mib
        vcpus_used = h.vcpus_used + h.reserved_vcpus
        unreachable = shared - h.storage if shared else shared
        if (
            not fits
            or have < need
            or vcpus_used + vcpus > int(h.cpus * ratio)
            or ((unreachable or local) and not copy_ok)
        ):
            rejections.append(judge(vm, h, rules))
            continue
        choices.append((h.name, room_score(have, h.memory_total_mib, vcpus_used, h.cpus * ratio, memory, vcpus, copies=bool(unreachable))))
    choices.sort(key=lambda c: (-c[1], c[0]))
    return Ranking(choices=choices, rejections=rejections)


# A dry run over thousands of hosts shows the best few and why the first few others
# would not do; the rest are counted (a reply stays far below NATS's max_payload).
CANDIDATES_SHOWN = 20
