"""The registry of hosts, fed by heartbeats. Pure: time arrives as an argument."""

from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec

from ferry.proto.api import HostState, HostView
from ferry.proto.events import CoordinatorEvent, HeartbeatRefused, HostAppeared, HostLost, HostReturned
from ferry.proto.host import HostBeat, HostStatus, VmInfo, VmState
from ferry.proto.names import printable

# Heartbeat intervals an agent may announce: faster floods the coordinator,
# slower leaves a dead host undetected for too long; outside, it is refused.
MIN_INTERVAL = 0.1
MAX_INTERVAL = 300.0
# A sequence number may run ahead of the heartbeats the elapsed time allows
# (interval jitter, a burst buffered across a reconnect) by this factor, plus slack.
SEQ_JUMP_FACTOR = 2.0
SEQ_JUMP_SLACK = 10
# Hosts kept at most: a name never seen before beyond it is refused, so
# heartbeats under ever new names cost bounded memory (scale goal: 5,000).
MAX_HOSTS = 20_000


@dataclass
class HostRecord:
    status: HostStatus
    last_seen: float
    state: HostState = HostState.UP
    # VM entries of the last heartbeat the coordinator could not read, one sentence each.
    rejected_vms: list[str] = field(default_factory=list)
    # The kind of refusal last reported for this host ("" since one was believed):
    # each kind is said once.
    refused: str = ""
    # The host as shown, built once per report or state change (a short beat
    # changes neither); `last_seen_age` is filled in by `views(now)`.
    view: HostView | None = None


class Refusal(NamedTuple):
    kind: str  # "interval" or "sequence": said once per kind until a heartbeat is believed again
    reason: str


def heartbeat_problem(current: HostStatus | None, incoming: HostStatus | HostBeat, elapsed: float) -> Refusal | None:
    """Why a heartbeat cannot be believed; None when it can. `current`: the one
    held for that host, `elapsed`: seconds since it arrived.

    A sequence number far ahead of what the time since the last heartbeat
    allows would make every later, genuine heartbeat look stale and freeze the
    host's report; an interval of 0 would make it lost at the next sweep."""
    if not MIN_INTERVAL <= incoming.interval <= MAX_INTERVAL:
        return Refusal(
            "interval",
            f"interval {incoming.interval:g} s is outside {MIN_INTERVAL:g}-{MAX_INTERVAL:g} s "
            "(heartbeat_interval in the agent's config)",
        )
    if current is None or current.boot_id != incoming.boot_id or incoming.seq <= current.seq:
        return None
    allowed = int(SEQ_JUMP_FACTOR * max(elapsed, 0.0) / min(current.interval, incoming.interval)) + SEQ_JUMP_SLACK
    if incoming.seq - current.seq > allowed:
        return Refusal(
            "sequence",
            f"sequence {incoming.seq} jumps {incoming.seq - current.seq} ahead of {current.seq} "
            f"after {elapsed:.1f} s (at most {allowed})",
        )
    return None


class Registry:
    """Hosts by name. A host silent for longer than its timeout is `lost`.

    The timeout is `timeout_factor` times the interval the host announces, or
    `timeout` seconds when set: hosts with a slow heartbeat are not declared
    lost by a rule made for fast ones.
    """

    def __init__(self, *, timeout_factor: float = 3.0, timeout: float | None = None) -> None:
        self._timeout_factor = timeout_factor
        self._timeout = timeout
        self._hosts: dict[str, HostRecord] = {}
        # Until then no host can be declared lost (see restart_clocks).
        self._quiet_until = float("-inf")
        # VM name -> the hosts whose report lists it: finding a VM among 50,000
        # without reading every report. Tuples of names, as the cycle collector
        # stops tracking those (50,000 sets would make each full collection longer).
        self._where: dict[str, tuple[str, ...]] = {}
        # Host names in order, kept until a new host appears.
        self._names: list[str] | None = None

    def timeout_for(self, status: HostStatus) -> float:
        if self._timeout is not None:
            return self._timeout
        return self._timeout_factor * status.interval

    def observe(self, status: HostStatus, now: float, rejected_vms: list[str] | None = None) -> list[CoordinatorEvent]:
        """`rejected_vms`: the heartbeat's VM entries that could not be read (the host keeps the rest).
        A heartbeat that cannot be believed changes nothing; HeartbeatRefused says why, once per reason."""
        record = self._hosts.get(status.host)
        refusal = heartbeat_problem(record.status if record else None, status, now - record.last_seen if record else 0.0)
        if refusal is not None:
            # A host not known yet stays unknown: nothing is kept for it (and nothing said).
            return _refused(record, refusal) if record is not None else []
        if record is None:
            if len(self._hosts) >= MAX_HOSTS:
                return []
            self._hosts[status.host] = HostRecord(status=status, last_seen=now, rejected_vms=list(rejected_vms or []))
            self._names = None
            self._index(status.host, [], status.vms)
            return [HostAppeared(host=status.host)]
        if _is_stale(record.status, status):
            return []
        if record.status.vms != status.vms:
            self._index(status.host, record.status.vms, status.vms)
        record.status = status
        record.rejected_vms = list(rejected_vms or [])
        _rebuild_view(record)
        return _seen(record, now)

    def beat(self, beat: HostBeat, now: float) -> tuple[bool, list[CoordinatorEvent]]:
        """A short heartbeat: believed when it vouches for the report held (same
        agent process, same digest); then the host is seen, as with a full report.
        False: the report it names is not the one held (unknown host, a restarted
        agent, a change whose full report was missed): ask the agent for it."""
        record = self._hosts.get(beat.host)
        if record is None or record.status.boot_id != beat.boot_id or record.status.digest != beat.digest:
            return False, []
        refusal = heartbeat_problem(record.status, beat, now - record.last_seen)
        if refusal is not None:
            return True, _refused(record, refusal)
        if _is_stale(record.status, beat):
            return True, []
        # The view shows neither the sequence nor the send time: it stays as built.
        record.status = msgspec.structs.replace(record.status, seq=beat.seq, sent_at=beat.sent_at)
        return True, _seen(record, now)

    def sweep(self, now: float) -> list[CoordinatorEvent]:
        events: list[CoordinatorEvent] = []
        for name, record in self._hosts.items():
            silent_for = now - record.last_seen
            timeout = self.timeout_for(record.status)
            if record.state == HostState.UP and silent_for > timeout and now > self._quiet_until:
                record.state = HostState.LOST
                record.view = None
                events.append(
                    HostLost(
                        host=name,
                        silent_for=round(silent_for, 3),
                        reason=f"no heartbeat for {silent_for:.1f} s (timeout {timeout:.1f} s)",
                        vms=[vm.name for vm in record.status.vms if vm.state in (VmState.RUNNING, VmState.PAUSED)],
                    )
                )
        return events

    def restart_clocks(self, now: float, grace: float = 0.0) -> None:
        """After the coordinator itself was cut off from NATS, silence proves
        nothing about the hosts: give every host a full timeout from now, and
        at least `grace` seconds, since agents reconnect on their own schedule."""
        self._quiet_until = now + grace
        for record in self._hosts.values():
            if record.state == HostState.UP:
                record.last_seen = max(record.last_seen, now)

    def believed(self, status: HostStatus) -> bool:
        """Whether `status` is what the registry now holds for its host (it was neither
        stale nor refused): only then may anything act on it."""
        record = self._hosts.get(status.host)
        return record is not None and record.status is status

    def longest_interval(self) -> float:
        """The longest heartbeat interval any host announced (0 before the first)."""
        return max((r.status.interval for r in self._hosts.values()), default=0.0)

    def get(self, host: str) -> HostRecord | None:
        return self._hosts.get(host)

    def __len__(self) -> int:
        return len(self._hosts)

    def _index(self, host: str, before: list[VmInfo], after: list[VmInfo]) -> None:
        where = self._where
        for vm in before:
            hosts = where.get(vm.name)
            if hosts is not None:
                left = tuple(h for h in hosts if h != host)
                if left:
                    where[vm.name] = left
                else:
                    del where[vm.name]
        for vm in after:
            hosts = where.get(vm.name, ())
            if host not in hosts:
                where[vm.name] = (*hosts, host)

    def reporting(self, vm: str) -> list[str]:
        """The hosts whose last report lists a VM of that name (any state)."""
        return sorted(self._where.get(vm, ()))

    def views(self, now: float) -> list[HostView]:
        """Every host in name order, with how long ago each was heard from."""
        return self.with_ages(self.current_views(), now)

    def with_ages(self, views: list[HostView], now: float) -> list[HostView]:
        """Views (of hosts held here) with `last_seen_age` filled in."""
        return [
            msgspec.structs.replace(v, last_seen_age=round(now - self._hosts[v.host].last_seen, 3))
            if v.host in self._hosts
            else v
            for v in views
        ]

    def current_views(self) -> list[HostView]:
        """Every host in name order, as built at its last report: the same objects
        until a report or a state changes them (placement caches by them), with
        `last_seen_age` left at 0."""
        if self._names is None:
            self._names = sorted(self._hosts)
        hosts = self._hosts
        return [hosts[name].view or self.current_view(name) for name in self._names]

    def view(self, host: str, now: float) -> HostView:
        (view,) = self.with_ages([self.current_view(host)], now)
        return view

    def current_view(self, host: str) -> HostView:
        record = self._hosts[host]
        if record.view is None:
            record.view = _build_view(host, record)
        return record.view


def _build_view(host: str, record: HostRecord) -> HostView:
    status = record.status
    return HostView(
        host=host,
        state=record.state,
        health=status.health,
        last_seen_age=0.0,
        capacity=status.capacity,
        checks=status.checks,
        vms=status.vms,
        versions=status.versions,
        cpu_model=status.cpu_model,
        host_uuid=status.host_uuid,
        backend=status.backend,
        arch=status.arch,
        migrations_in_flight=status.migrations_in_flight,
        vm_problems=[
            *(
                f"{printable(vm.name)}: the agent could not describe it: {printable(vm.reason)}"
                for vm in status.unreadable_vms
            ),
            *record.rejected_vms,
        ],
        networks=status.networks,
        peer_uri=status.peer_uri,
        vm_count=sum(1 for vm in status.vms if vm.state in (VmState.RUNNING, VmState.PAUSED)),
    )


def _rebuild_view(record: HostRecord) -> None:
    """After a full report: a view equal to the one held is kept, so that what
    caches by view (placement's facts and index) does nothing for a report that
    only repeats itself, as most do."""
    held = record.view
    record.view = None
    if held is not None:
        fresh = _build_view(held.host, record)
        record.view = held if fresh == held else fresh


def _refused(record: HostRecord, refusal: Refusal) -> list[CoordinatorEvent]:
    """A heartbeat of a known host not believed: said once per kind of refusal."""
    if record.refused == refusal.kind:
        return []
    record.refused = refusal.kind
    return [HeartbeatRefused(host=record.status.host, reason=refusal.reason)]


def _seen(record: HostRecord, now: float) -> list[CoordinatorEvent]:
    """A heartbeat believed (a full report or a short beat): the host is heard from now."""
    record.last_seen = now
    record.refused = ""
    if record.state == HostState.LOST:
        record.state = HostState.UP
        record.view = None
        return [HostReturned(host=record.status.host)]
    return []


def _is_stale(current: HostStatus, incoming: HostStatus | HostBeat) -> bool:
    """A heartbeat older than the one we hold, from the same agent process
    (buffered heartbeats can arrive late after a reconnect)."""
    return incoming.boot_id == current.boot_id and incoming.seq <= current.seq
