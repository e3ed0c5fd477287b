"""What is restarted when a host is dead, in which order, and where each goes. Pure.

Only VMs the dead host last reported running (or paused) are candidates; a VM
is restarted when its HA priority is not `off`, a copy of its definition was
kept, none of its disks was on the dead host's own storage, and no host that
reports runs it now. Everything else is said, VM by VM, with the reason.
"""

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ferry.coordinator.placement import HostFacts, PlacementRules, VmDemand, rank
from ferry.proto.ha import DomainCopy, HaPolicy, HaPriority, Restart, RestartState
from ferry.proto.host import VmInfo, VmState

_ORDER = {HaPriority.HIGH: 0, HaPriority.MEDIUM: 1, HaPriority.LOW: 2, HaPriority.OFF: 3}


@dataclass(frozen=True)
class Planned:
    vm: str
    priority: HaPriority
    copy: DomainCopy


@dataclass(frozen=True)
class Skipped:
    vm: str
    reason: str


def plan_restarts(
    host: str,
    vms: Iterable[VmInfo],
    policy: Callable[[str], HaPolicy],
    copy: Callable[[str], DomainCopy | None],
    running_on: Callable[[str], list[str]],
) -> tuple[list[Planned], list[Skipped]]:
    """The restarts for the dead `host` (high priority first, then by name), and the VMs not restarted."""
    planned: list[Planned] = []
    skipped: list[Skipped] = []
    for vm in vms:
        if vm.state not in (VmState.RUNNING, VmState.PAUSED):
            continue
        priority = policy(vm.name).priority
        kept = copy(vm.name)
        elsewhere = [h for h in running_on(vm.name) if h != host]
        if priority == HaPriority.OFF:
            skipped.append(Skipped(vm.name, "its HA priority is off (ferry ha set VM --priority high|medium|low)"))
        elif elsewhere:
            skipped.append(Skipped(vm.name, f"it runs on {', '.join(elsewhere)}"))
        elif kept is None or kept.uuid != vm.uuid:
            skipped.append(Skipped(vm.name, f"no copy of its definition was kept before {host} died"))
        elif kept.local_disks:
            skipped.append(
                Skipped(vm.name, f"its disks {', '.join(kept.local_disks)} were on {host}'s own storage, which died with it")
            )
        else:
            planned.append(Planned(vm.name, priority, kept))
    planned.sort(key=lambda p: (_ORDER[p.priority], p.vm))
    return planned, skipped


def restart_id(host: str, fenced_at: float, vm: str) -> str:
    """The same restart for the same fence, whichever leader plans it (a record is created once)."""
    return "r" + hashlib.sha256(f"{host}\0{fenced_at!r}\0{vm}".encode()).hexdigest()[:20]


def restart_order(restart: Restart) -> tuple:
    return (_ORDER[restart.priority], restart.created_at, restart.vm)


def demand_of(restart: Restart, copy: DomainCopy) -> VmDemand:
    """The restart as placement sees it: no source to be older than, no stream to carry."""
    return VmDemand(
        name=restart.vm, source=restart.host, vcpus=copy.vcpus, memory_mib=copy.memory_mib,
        libvirt_version="", qemu_version="", attachments=tuple(copy.attachments),
    )


@dataclass(frozen=True)
class Choice:
    restart_id: str
    # Best first; empty: no host can take it now.
    dests: list[str]
    reason: str = ""


def choose_hosts(
    queued: list[tuple[Restart, DomainCopy]],
    facts: list[HostFacts],
    starting: dict[str, int],
    per_host: int,
    at_once: int,
    rules: PlacementRules = PlacementRules(),
) -> list[Choice]:
    """Where the queued restarts go now, in priority order: each takes its room before
    the next is placed; at most `per_host` start on one host and `at_once` in all
    (`starting`: restarts under way by host). Pure."""
    by_name = {f.name: f for f in facts}
    load = dict(starting)
    running = sum(load.values())
    chosen: list[Choice] = []
    for restart, copy in sorted(queued, key=lambda pair: restart_order(pair[0])):
        if running >= at_once:
            chosen.append(Choice(restart.id, [], f"{running} restarts are under way; at most {at_once} at once"))
            continue
        candidates = [f for name, f in by_name.items() if name not in restart.candidates_tried]
        ranking = rank(demand_of(restart, copy), candidates, rules)
        dests = [name for name, _score in ranking.choices if load.get(name, 0) < per_host]
        if not dests:
            why = "; ".join(f"{r.host}: {r.reason}" for r in ranking.rejections if r.code != "same_host")
            full = [name for name, _score in ranking.choices]
            if full:
                why = f"{', '.join(full[:5])} already start {per_host} restarted VMs each"
            chosen.append(Choice(restart.id, [], f"no host can take {restart.vm} now: {why or 'no other host reports'}"))
            continue
        best = by_name[dests[0]]
        by_name[best.name] = best.holding(copy.vcpus, copy.memory_mib)
        load[best.name] = load.get(best.name, 0) + 1
        running += 1
        chosen.append(Choice(restart.id, dests))
    return chosen


def new_restart(planned: Planned, host: str, *, fenced_at: float, lost_at: float, fenced_by: str, now: float) -> Restart:
    return Restart(
        id=restart_id(host, fenced_at, planned.vm), vm=planned.vm, host=host, priority=planned.priority,
        state=RestartState.QUEUED, created_at=now, updated_at=now, lost_at=lost_at, fenced_by=fenced_by,
        vcpus=planned.copy.vcpus, memory_mib=planned.copy.memory_mib,
    )
