"""Checks and inputs for a new session. Pure: the hosts as last reported, and the
sessions in flight, in; a decision or a FerryError with a sentence out."""

from collections.abc import Callable, Iterable
from dataclasses import replace

from ferry.coordinator.placement import HostFacts, PlacementRules, VmDemand
from ferry.coordinator.prediction import predict
from ferry.proto.agent import DirtyRate, VmDescription
from ferry.proto.api import HostState, HostView
from ferry.proto.convergence import POLICIES, Policy, Prediction
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import VmState
from ferry.proto.network import NetworkOffer
from ferry.proto.session import MigrateOptions, Session, SessionState, StorageMode


def find_source(vm: str, source: str | None, hosts: Iterable[HostView], located: Iterable[str] | None = None) -> HostView:
    """The host the VM runs on: the one named (checked), else the one reporting it.
    `located`: the hosts whose reports list the VM, when an index knows them."""
    by_name = {h.host: h for h in hosts}
    if source is not None:
        view = by_name.get(source)
        if view is None:
            raise FerryError(ErrorCode.UNKNOWN_HOST, f"no host named {source} has reported to the coordinator")
        if view.state == HostState.LOST:
            raise FerryError(ErrorCode.HOST_LOST, f"{source} is lost (no heartbeat within its timeout); its VMs cannot be live-migrated")
        return view
    among = [by_name[name] for name in located if name in by_name] if located is not None else list(by_name.values())
    running = [h for h in among if any(v.name == vm and v.state == VmState.RUNNING for v in h.vms)]
    if not running:
        known = [h.host for h in among if any(v.name == vm for v in h.vms)]
        if known:
            raise FerryError(ErrorCode.CONFLICT, f"{vm} is not running (known on {', '.join(known)}); only running VMs are live-migrated")
        raise FerryError(ErrorCode.UNKNOWN_VM, f"no host reports a VM named {vm}")
    if len(running) > 1:
        raise FerryError(
            ErrorCode.CONFLICT, f"{vm} is reported running on {', '.join(h.host for h in running)}; name the source with --from"
        )
    view = running[0]
    if view.state == HostState.LOST:
        raise FerryError(ErrorCode.HOST_LOST, f"{vm} runs on {view.host}, which is lost; its VMs cannot be live-migrated")
    return view


def check_named_dest(dest: str, source: str, hosts: Iterable[HostView]) -> HostView:
    """A destination the user named must exist, be up and differ from the source.
    Capacity and compatibility are the destination's own call (it declines)."""
    if dest == source:
        raise FerryError(ErrorCode.BAD_REQUEST, f"the destination {dest} is the source; nothing to move")
    view = next((h for h in hosts if h.host == dest), None)
    if view is None:
        raise FerryError(ErrorCode.UNKNOWN_HOST, f"no host named {dest} has reported to the coordinator")
    if view.state == HostState.LOST:
        raise FerryError(ErrorCode.HOST_LOST, f"the destination {dest} is lost (no heartbeat within its timeout)")
    if view.draining:
        raise FerryError(ErrorCode.CONFLICT, f"the destination {dest} is draining ({view.drain_reason}): no new VMs are placed there")
    return view


def demand_of(vm: VmDescription, source: HostView) -> VmDemand:
    return VmDemand(
        name=vm.name,
        source=source.host,
        vcpus=vm.vcpus,
        memory_mib=vm.memory_mib,
        libvirt_version=source.versions.libvirt,
        qemu_version=source.versions.qemu,
        arch=vm.arch or source.arch or "x86_64",
        local_disks=any(d.local for d in vm.disks),
        attachments=tuple(vm.attachments),
    )


def reported_demand(vm: str, source: HostView) -> VmDemand:
    """The VM's size as its host last reported it: enough to place it before the
    source describes it in full (its disks are known only then)."""
    info = next((v for v in source.vms if v.name == vm), None)
    return VmDemand(
        name=vm,
        source=source.host,
        vcpus=info.vcpus if info else 0,
        memory_mib=info.memory_mib if info else 0,
        libvirt_version=source.versions.libvirt,
        qemu_version=source.versions.qemu,
        arch=source.arch or "x86_64",
        attachments=tuple(info.attachments) if info else (),
    )


def rules_for(session: Session, base: PlacementRules = PlacementRules()) -> PlacementRules:
    if session.options.storage == StorageMode.SHARED:
        return PlacementRules(
            cpu_allocation_ratio=base.cpu_allocation_ratio,
            memory_margin_mib=base.memory_margin_mib,
            allow_storage_copy=False,
        )
    return base


# A queued session holds nothing: it has not been admitted, and its `dest` is
# only a wish (a drain's plan, or a host the user named, which judges for itself
# when admitted). Counting it would make it wait for room that it holds itself.
_HOLD_NOTHING = (SessionState.QUEUED, SessionState.FAILED, SessionState.CANCELLED)


def host_facts(
    hosts: Iterable[HostView], in_flight: Iterable[Session], cache: "FactsCache | None" = None
) -> list[HostFacts]:
    """Placement's view: each host as reported, minus what sessions heading there hold.

    An admitted session (preparing, migrating, post-copy) holds its VM's size on
    its destination until the VM shows up in that host's report (then the report
    itself counts it). A completed session still holds it until then: the report
    can lag the completion. A queued session holds nothing, whatever destination
    it hopes for: admission places it against the room the others leave.

    `cache`: facts kept from the last call for views that are the same objects.
    """
    views = list(hosts)
    reserved = held_room(in_flight, lists_vm(views))
    bases = cache.all(views) if cache is not None else [_facts_of(h) for h in views]
    if not reserved:
        return bases
    return [
        replace(base, reserved_vcpus=held[0], reserved_memory_mib=held[1]) if (held := reserved.get(base.name)) else base
        for base in bases
    ]


def lists_vm(views: list[HostView]) -> Callable[[str, str], bool]:
    """`reports(host, vm)` for `held_room` from these views: whether the host's last
    report lists the VM (the views are indexed by name at the first question only)."""
    by_name: dict[str, HostView] = {}

    def reports(host: str, vm: str) -> bool:
        if not by_name:
            by_name.update((h.host, h) for h in views)
        dest = by_name.get(host)
        return dest is not None and any(v.name == vm for v in dest.vms)

    return reports


def held_room(in_flight: Iterable[Session], reports: Callable[[str, str], bool]) -> dict[str, tuple[int, int]]:
    """Destination -> (vCPUs, MiB) that sessions heading there hold (see `host_facts`).
    `reports(host, vm)`: whether the host's last report lists the VM."""
    reserved: dict[str, tuple[int, int]] = {}
    for s in in_flight:
        if s.state in _HOLD_NOTHING or s.dest is None or reports(s.dest, s.vm):
            continue
        vcpus, memory = reserved.get(s.dest, (0, 0))
        reserved[s.dest] = (vcpus + s.demand.vcpus, memory + s.demand.memory_mib)
    return reserved


class FactsCache:
    """Each host's facts, built again only when its view is a new object (a new
    report, a state change, a mark): 5,000 hosts are not rebuilt for each placement."""

    def __init__(self) -> None:
        self._by_host: dict[str, tuple[HostView, HostFacts]] = {}

    def all(self, views: Iterable[HostView]) -> list[HostFacts]:
        """The facts of each view, in order (one tight loop: thousands per placement)."""
        by_host, facts = self._by_host, []
        for view in views:
            held = by_host.get(view.host)
            if held is None or held[0] is not view:
                held = by_host[view.host] = (view, _facts_of(view))
            facts.append(held[1])
        return facts


def _facts_of(h: HostView) -> HostFacts:
    return HostFacts(
        name=h.host,
        up=h.state == HostState.UP,
        health=h.health,
        cpus=h.capacity.cpus,
        vcpus_used=h.capacity.vcpus_used,
        memory_total_mib=h.capacity.memory_total_mib,
        memory_free_mib=h.capacity.memory_free_mib,
        memory_used_mib=h.capacity.memory_used_mib,
        libvirt_version=h.versions.libvirt,
        qemu_version=h.versions.qemu,
        arch=h.arch or "x86_64",
        draining=h.draining,
        cordoned=h.cordoned,
        networks=NetworkOffer(h.networks) if h.networks is not None else None,
    )


def check_policy(options: MigrateOptions) -> Policy:
    policy = POLICIES.get(options.policy)
    if policy is None:
        raise FerryError(
            ErrorCode.BAD_REQUEST, f"no convergence policy named {options.policy}; known: {', '.join(POLICIES)}"
        )
    return policy


# A dirty rate measured longer ago than this says little about the guest now.
RATE_MAX_AGE_SECONDS = 300.0
MIB = 1024 * 1024


def fresh_rate(vm: VmDescription, now: float) -> bool:
    return vm.dirty_rate_at > 0 and now - vm.dirty_rate_at <= RATE_MAX_AGE_SECONDS


def prediction_for(session: Session, vm: VmDescription, measured: DirtyRate | None, bandwidth_mib: int) -> Prediction | None:
    """What plain pre-copy should do for this session: from a fresh measurement,
    else the source's recent one; None when the guest was never measured."""
    if measured is not None:
        bps, at, seconds = measured.bps, measured.at, measured.seconds
    elif vm.dirty_rate_at > 0:
        bps, at, seconds = vm.dirty_rate_bps, vm.dirty_rate_at, 0.0
    else:
        return None
    return predict(
        memory_bytes=vm.memory_mib * MIB,
        dirty_rate_bps=bps,
        bandwidth_bps=bandwidth_mib * MIB,
        max_downtime_ms=session.options.max_downtime_ms,
        policy=check_policy(session.options),
        allow_postcopy=session.options.allow_postcopy,
        measured_at=at,
        measure_seconds=seconds,
    )
