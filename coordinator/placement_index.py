"""Placement over thousands of hosts, reading only the best few. Pure.

`rank` judges every host for every VM: at 5,000 hosts that is milliseconds of
Python per placement. Here the hosts that could take some VM are grouped by
what makes their scores comparable (hardware size, software, networks,
storage). Within a group a VM's score orders the hosts as their free room
does, whatever the VM: each group keeps its hosts sorted by room, and a
placement reads each group from the top until it has the best few. How many
hosts a VM fits on is read from two more sorted lists per group (memory,
vCPUs). Hosts no VM may take now (lost, unhealthy, draining, cordoned), the
VM's own host and hosts whose room is held by migrations in flight are judged
one by one: they are few.

A `Shortlist` is what `rank` says, cut short: the same best choices in the
same order with the same scores, how many hosts could take the VM, the first
rejections with their sentences, and every rejection counted by code.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ferry.coordinator.placement import HostFacts, PlacementRules, Rejection, VmDemand, judge, room_score
from ferry.proto.host import HealthState, version_tuple
from ferry.proto.network import NetworkOffer, missing_attachments

# Room keys closer than this may give equal scores once rounded (to 6 places):
# a group is read this far past its last pick, so no tie is left out.
_TIE = 1e-5
# Sorts after every host name.
_LAST = "\U0010ffff"


@dataclass
class Shortlist:
    choices: list[tuple[str, float]] = field(default_factory=list)  # the best, best first, as `rank` orders them
    candidate_count: int = 0
    rejections: list[Rejection] = field(default_factory=list)  # the first few (not the VM's own host), with sentences
    rejected: Counter[str] = field(default_factory=Counter)  # every rejected host, by code
    hosts: int = 0

    @property
    def best(self) -> str | None:
        return self.choices[0][0] if self.choices else None


def placeable(h: HostFacts) -> bool:
    """Whether some VM could go there now (what it runs and reports aside)."""
    return h.up and not h.draining and not h.cordoned and h.health == HealthState.OK


def _group_key(h: HostFacts) -> tuple:
    offer = h.networks
    return (h.arch, h.libvirt_version, h.qemu_version, offer.key if isinstance(offer, NetworkOffer) else offer,
            h.storage, h.cpus, h.memory_total_mib)


class _Group:
    """Hosts whose scores order alike for any VM: same size, software, networks, storage."""

    __slots__ = ("by_memory", "by_vcpus", "orders", "room", "sample")

    def __init__(self, sample: HostFacts, ratios: Iterable[float]) -> None:
        self.sample = sample
        self.room: dict[str, tuple[int, int]] = {}  # host -> (memory available, vCPUs used)
        self.by_memory: list[tuple[int, str]] = []
        self.by_vcpus: list[tuple[int, str]] = []
        # vCPU allocation ratio -> (room key, host), best first; kept up from the start for
        # the ratios the index was made for, built at the first placement for any other.
        self.orders: dict[float, list[tuple[float, str]]] = {ratio: [] for ratio in ratios}

    def key(self, memory: int, vcpus: int, ratio: float) -> float:
        total = self.sample.memory_total_mib
        limit = self.sample.cpus * ratio
        return -(0.6 * memory / (total if total > 1 else 1) + 0.3 * (limit - vcpus) / (limit if limit > 1 else 1))

    def add(self, name: str, memory: int, vcpus: int) -> None:
        self.room[name] = (memory, vcpus)
        bisect.insort(self.by_memory, (memory, name))
        bisect.insort(self.by_vcpus, (vcpus, name))
        for ratio, order in self.orders.items():
            bisect.insort(order, (self.key(memory, vcpus, ratio), name))

    def remove(self, name: str) -> None:
        memory, vcpus = self.room.pop(name)
        _discard(self.by_memory, (memory, name))
        _discard(self.by_vcpus, (vcpus, name))
        for ratio, order in self.orders.items():
            _discard(order, (self.key(memory, vcpus, ratio), name))

    def order(self, ratio: float) -> list[tuple[float, str]]:
        order = self.orders.get(ratio)
        if order is None:
            order = self.orders[ratio] = sorted((self.key(m, v, ratio), n) for n, (m, v) in self.room.items())
        return order

    def short_of_memory(self, need: int) -> list[tuple[int, str]]:
        return self.by_memory[: bisect.bisect_left(self.by_memory, (need, ""))]

    def over_vcpus(self, allowed: int) -> list[tuple[int, str]]:
        return self.by_vcpus[bisect.bisect_right(self.by_vcpus, (allowed, _LAST)) :]

    def fits(self, name: str, need: int, allowed: int) -> bool:
        memory, vcpus = self.room[name]
        return memory >= need and vcpus <= allowed


def _discard(ordered: list, item: tuple) -> None:
    at = bisect.bisect_left(ordered, item)
    if at < len(ordered) and ordered[at] == item:
        del ordered[at]


class PlacementIndex:
    """The hosts' facts, grouped and sorted as they change (`sync`), for `shortlist`."""

    def __init__(self, ratios: Iterable[float] = (PlacementRules().cpu_allocation_ratio,)) -> None:
        self._ratios = tuple(ratios)
        self._facts: dict[str, HostFacts] = {}
        self._groups: dict[tuple, _Group] = {}
        self._group_of: dict[str, _Group] = {}
        # Hosts no VM may take now, and facts that carry a reservation: judged one by one.
        self._aside: dict[str, HostFacts] = {}

    def sync(self, facts: Sequence[HostFacts]) -> None:
        """Take the hosts as they are now (one entry per host); only those whose facts
        are new objects are sorted again."""
        known = self._facts
        for f in [f for f in facts if known.get(f.name) is not f]:
            self._put(f)
        if len(known) != len(facts):
            for gone in known.keys() - {f.name for f in facts}:
                self._drop(gone)
                del known[gone]

    def _put(self, f: HostFacts) -> None:
        self._drop(f.name)
        self._facts[f.name] = f
        if not placeable(f) or f.reserved_vcpus or f.reserved_memory_mib:
            self._aside[f.name] = f
            return
        key = _group_key(f)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(f, self._ratios)
        group.add(f.name, min(f.memory_free_mib, f.memory_total_mib - f.memory_used_mib), f.vcpus_used)
        self._group_of[f.name] = group

    def _drop(self, name: str) -> None:
        self._aside.pop(name, None)
        group = self._group_of.pop(name, None)
        if group is not None:
            group.remove(name)
            if not group.room:
                del self._groups[_group_key(group.sample)]

    def shortlist(
        self, vm: VmDemand, rules: PlacementRules = PlacementRules(), held: Mapping[str, tuple[int, int]] | None = None,
        shown: int = 20,
    ) -> Shortlist:
        """The best `shown` hosts for `vm` and why the first `shown` others would not do.
        `held`: host -> (vCPUs, MiB) that migrations in flight hold there."""
        held = held or {}
        # The VM's own host and hosts with room held: judged on their own, outside their group.
        apart = {name: self._facts[name] for name in (vm.source, *held) if name in self._facts}
        reading = _Reading(vm, rules, shown, apart, self._facts, Shortlist(hosts=len(self._facts)))
        for name, f in apart.items():
            if name in held:
                vcpus, memory = held[name]
                f = f.holding(vcpus, memory)
            reading.judged(name, judge(vm, f, rules))
        for name, f in self._aside.items():
            if name not in apart:
                reading.judged(name, judge(vm, f, rules))
        for group in self._groups.values():
            reading.group(group, [name for name in apart if self._group_of.get(name) is group])
        reading.picks.sort(key=lambda c: (-c[1], c[0]))
        reading.result.choices = reading.picks[:shown]
        return reading.result


@dataclass
class _Reading:
    """One shortlist in the making."""

    vm: VmDemand
    rules: PlacementRules
    shown: int
    apart: Mapping[str, HostFacts]
    facts: Mapping[str, HostFacts]
    result: Shortlist
    picks: list[tuple[str, float]] = field(default_factory=list)

    def judged(self, name: str, verdict: Rejection | float) -> None:
        result = self.result
        if isinstance(verdict, Rejection):
            result.rejected[verdict.code] += 1
            # The VM's own host is counted, not explained.
            if len(result.rejections) < self.shown and verdict.code != "same_host":
                result.rejections.append(verdict)
        else:
            result.candidate_count += 1
            self.picks.append((name, verdict))

    def group(self, group: _Group, apart: list[str]) -> None:
        """Count the group's hosts by verdict, explain the first few turned down, pick its best."""
        vm, rules, h, result = self.vm, self.rules, group.sample, self.result
        size = len(group.room) - len(apart)
        if size <= 0:
            return
        kind = _kind_problem(vm, h)
        if kind is not None:
            # Judged before the room: every host of the kind is turned down for it.
            result.rejected[kind] += size
            self._sentences(group.room)
            return
        need = vm.memory_mib + rules.memory_margin_mib
        allowed = int(h.cpus * rules.cpu_allocation_ratio) - vm.vcpus
        unreachable = vm.shared_storage - h.storage if vm.shared_storage else vm.shared_storage
        fit = _fitting(group, need, allowed, apart)
        result.rejected["no_capacity"] += size - fit
        if (unreachable or vm.local_disks) and not rules.allow_storage_copy:
            result.rejected["storage_unreachable"] += fit
            self._sentences(group.room)
            return
        result.candidate_count += fit
        if size > fit:
            self._sentences(dict.fromkeys(n for _v, n in (*group.short_of_memory(need), *group.over_vcpus(allowed))))
        if fit:
            self._best(group, need, allowed, copies=bool(unreachable))

    def _best(self, group: _Group, need: int, allowed: int, *, copies: bool) -> None:
        """The group's best `shown` hosts with room, and those that may tie with the last."""
        vm, h, ratio = self.vm, group.sample, self.rules.cpu_allocation_ratio
        total, limit = h.memory_total_mib, h.cpus * ratio
        order = group.order(ratio)
        at, end, taken = 0, len(order), 0
        while at < end:
            key, name = order[at]
            at += 1
            if name in self.apart:
                continue
            memory, vcpus = group.room[name]
            if memory < need or vcpus > allowed:
                continue
            self.picks.append((name, room_score(memory, total, vcpus, limit, vm.memory_mib, vm.vcpus, copies=copies)))
            taken += 1
            if taken == self.shown:
                # Hosts with the same key come after this one by name, as they rank: none
                # is needed. Keys a little larger may round to the same score and rank
                # ahead by name: those are read too.
                at = bisect.bisect_right(order, (key, _LAST))
                end = bisect.bisect_right(order, (key + _TIE, _LAST))

    def _sentences(self, names: Iterable[str]) -> None:
        """Sentences for rejected hosts among `names`, while fewer than `shown` are written."""
        rejections = self.result.rejections
        for name in names:
            if len(rejections) >= self.shown:
                return
            if name not in self.apart:
                verdict = judge(self.vm, self.facts[name], self.rules)
                if isinstance(verdict, Rejection):
                    rejections.append(verdict)


def _fitting(group: _Group, need: int, allowed: int, apart: list[str]) -> int:
    """How many of the group's hosts (those judged apart left out) have the room."""
    short, over = group.short_of_memory(need), group.over_vcpus(allowed)
    if len(short) <= len(over):
        both = sum(1 for _v, n in short if group.room[n][1] > allowed)
    else:
        both = sum(1 for _v, n in over if group.room[n][0] < need)
    fit = len(group.room) - len(short) - len(over) + both
    return fit - sum(1 for name in apart if group.fits(name, need, allowed))


def _kind_problem(vm: VmDemand, h: HostFacts) -> str | None:
    """What keeps the VM off every host of this kind, whatever its room (a code), or None."""
    if h.arch != vm.arch:
        return "arch_mismatch"
    if version_tuple(h.libvirt_version) < version_tuple(vm.libvirt_version):
        return "version_older"
    if version_tuple(h.qemu_version) < version_tuple(vm.qemu_version):
        return "version_older"
    if h.networks is not None and vm.attachments and missing_attachments(vm.attachments, h.networks):
        return "network_missing"
    return None


def shortlist_lines(shortlist: Shortlist, hide: frozenset[str] = frozenset({"same_host"})) -> list[str]:
    """One sentence per rejection shown, then one line counting the rest by code
    (`hide`: codes not worth a line, such as the VM's own host)."""
    rest = Counter({code: n for code, n in shortlist.rejected.items() if code not in hide})
    rest.subtract(Counter(r.code for r in shortlist.rejections))
    rest = +rest
    lines = [f"{r.host}: {r.reason}" for r in shortlist.rejections]
    if rest:
        counts = ", ".join(f"{code} {n:,}" for code, n in sorted(rest.items(), key=lambda item: (-item[1], item[0])))
        lines.append(f"{sum(rest.values()):,} more hosts: {counts}")
    return lines
