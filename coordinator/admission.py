"""Admission: which queued sessions start now, and where. Pure.

Queued sessions are taken in order (evacuations first, then priority, then
age). Each one that fits the limits is admitted with a destination chosen by
placement, and the capacity it will take is counted before the next one is
placed, so one pass never overfills a host. A session that does not fit waits,
with a sentence naming the limit that holds it.
"""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ferry.coordinator.placement import HostFacts, PlacementRules, VmDemand, rank
from ferry.proto.limits import Limits


@dataclass(frozen=True)
class Queued:
    session_id: str
    demand: VmDemand
    created_at: float
    priority: int = 0
    evacuation: bool = False
    # The user named it: only this host, and placement's opinion is not asked.
    dest: str | None = None
    # Preferred when it can take the VM (a drain's plan).
    hint: str | None = None
    avoid: frozenset[str] = frozenset()
    rules: PlacementRules = PlacementRules()

    @property
    def source(self) -> str:
        return self.demand.source


@dataclass(frozen=True)
class Slot:
    """An admitted session: it holds a slot on its source and its destination."""

    session_id: str
    source: str
    dest: str


@dataclass(frozen=True)
class Admit:
    session_id: str
    dest: str
    # Other hosts that could take the VM, best first: tried if `dest` declines.
    alternatives: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Wait:
    session_id: str
    code: str
    reason: str


@dataclass(frozen=True)
class Refuse:
    """No host can take the VM at all: waiting would not help."""

    session_id: str
    code: str
    reason: str


Decision = Admit | Wait | Refuse


def queue_order(session: Queued) -> tuple:
    return (not session.evacuation, -session.priority, session.created_at, session.session_id)


@dataclass
class Load:
    """Slots in use, counted as sessions are admitted."""

    limits: Limits
    total: int = 0
    outbound: Counter = field(default_factory=Counter)
    inbound: Counter = field(default_factory=Counter)

    @classmethod
    def of(cls, limits: Limits, slots: Iterable[Slot]) -> "Load":
        load = cls(limits)
        for slot in slots:
            load.take(slot.source, slot.dest)
        return load

    def take(self, source: str, dest: str) -> None:
        self.total += 1
        self.outbound[source] += 1
        self.inbound[dest] += 1

    def cluster_full(self) -> bool:
        return self.total >= self.limits.cluster

    def outbound_full(self, host: str) -> bool:
        return self.outbound[host] >= self.limits.outbound_per_host

    def inbound_full(self, host: str) -> bool:
        return self.inbound[host] >= self.limits.inbound_per_host


def inbound_room(limits: Limits, slots: Iterable[Slot], host: str, *, ignoring: str | None = None) -> bool:
    """Whether `host` can take one more arriving migration (`ignoring` one session's own slot)."""
    load = Load.of(limits, (s for s in slots if s.session_id != ignoring))
    return not load.inbound_full(host)


def cluster_full(limits: Limits, slots: Iterable[Slot]) -> bool:
    return Load.of(limits, slots).cluster_full()


def cluster_waits(limits: Limits, slots: Iterable[Slot], session_ids: Iterable[str]) -> list[Decision]:
    """With the cluster at its limit every queued session waits: no placement needed to say so."""
    load = Load.of(limits, slots)
    return [_cluster_wait(session_id, load) for session_id in session_ids]


def _cluster_wait(session_id: str, load: Load) -> Wait:
    return Wait(
        session_id, "cluster_limit", f"{load.total} migrations are in flight; the cluster limit is {load.limits.cluster}"
    )


def admit(
    limits: Limits, queue: Iterable[Queued], slots: Iterable[Slot], hosts: Iterable[HostFacts]
) -> list[Decision]:
    load = Load.of(limits, slots)
    facts = {h.name: h for h in hosts}
    decisions: list[Decision] = []
    for session in sorted(queue, key=queue_order):
        if load.cluster_full():
            decisions.append(_cluster_wait(session.session_id, load))
            continue
        if load.outbound_full(session.source):
            decisions.append(
                Wait(
                    session.session_id,
                    "outbound_limit",
                    f"{session.source} already sends {load.outbound[session.source]} migrations; "
                    f"the limit per host is {limits.outbound_per_host}",
                )
            )
            continue
        decision = _place(session, load, facts)
        decisions.append(decision)
        if isinstance(decision, Admit):
            load.take(session.source, decision.dest)
            chosen = facts.get(decision.dest)
            if chosen is not None:
                facts[decision.dest] = chosen.holding(session.demand.vcpus, session.demand.memory_mib)
    return decisions


def _place(session: Queued, load: Load, facts: dict[str, HostFacts]) -> Decision:
    if session.dest is not None:
        # A named destination judges for itself (it declines with a reason).
        if load.inbound_full(session.dest):
            return Wait(session.session_id, "inbound_limit", _inbound_sentence(session.dest, load))
        return Admit(session.session_id, session.dest)
    candidates = [h for name, h in facts.items() if name not in session.avoid]
    ranking = rank(session.demand, candidates, session.rules)
    choices = [name for name, _score in ranking.choices]
    if not choices:
        unheld = [replace(h, reserved_vcpus=0, reserved_memory_mib=0) for h in candidates]
        could = [name for name, _score in rank(session.demand, unheld, session.rules).choices]
        if could:
            # Room is only held for migrations in flight; if one fails, it frees up.
            return Wait(
                session.session_id,
                "capacity_held",
                f"the hosts that could take {session.demand.name} ({', '.join(could[:5])}) hold their room "
                "for migrations in flight",
            )
        why = "; ".join(f"{r.host}: {r.reason}" for r in ranking.rejections) or "no other host reports"
        if session.avoid:
            why += f"; already failed on {', '.join(sorted(session.avoid))}"
        return Refuse(session.session_id, "no_destination", f"no host can take {session.demand.name}: {why}")
    with_room = [name for name in choices if not load.inbound_full(name)]
    if not with_room:
        full = ", ".join(choices[:5]) + (" …" if len(choices) > 5 else "")
        return Wait(
            session.session_id,
            "inbound_limit",
            f"every host that can take {session.demand.name} ({full}) already receives "
            f"{load.limits.inbound_per_host} migrations",
        )
    if session.hint in with_room:
        with_room.remove(session.hint)
        with_room.insert(0, session.hint)
    return Admit(session.session_id, with_room[0], alternatives=with_room[1:])


def _inbound_sentence(host: str, load: Load) -> str:
    return f"{host} already receives {load.inbound[host]} migrations; the limit per host is {load.limits.inbound_per_host}"
