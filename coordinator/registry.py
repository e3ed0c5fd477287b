"""The registry of hosts, fed by heartbeats. Pure: time arrives as an argument."""

from dataclasses import dataclass, field

from ferry.proto.api import HostState, HostView
from ferry.proto.events import CoordinatorEvent, HostAppeared, HostLost, HostReturned
from ferry.proto.host import HostStatus, VmState
from ferry.proto.names import printable


@dataclass
class HostRecord:
    status: HostStatus
    last_seen: float
    state: HostState = HostState.UP
    # VM entries of the last heartbeat the coordinator could not read, one sentence each.
    rejected_vms: list[str] = field(default_factory=list)


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

    def timeout_for(self, status: HostStatus) -> float:
        if self._timeout is not None:
            return self._timeout
        return self._timeout_factor * status.interval

    def observe(self, status: HostStatus, now: float, rejected_vms: list[str] | None = None) -> list[CoordinatorEvent]:
        """`rejected_vms`: the heartbeat's VM entries that could not be read (the host keeps the rest)."""
        record = self._hosts.get(status.host)
        if record is None:
            self._hosts[status.host] = HostRecord(status=status, last_seen=now, rejected_vms=list(rejected_vms or []))
            return [HostAppeared(host=status.host)]
        if _is_stale(record.status, status):
            return []
        record.status = status
        record.last_seen = now
        record.rejected_vms = list(rejected_vms or [])
        if record.state == HostState.LOST:
            record.state = HostState.UP
            return [HostReturned(host=status.host)]
        return []

    def sweep(self, now: float) -> list[CoordinatorEvent]:
        events: list[CoordinatorEvent] = []
        for name, record in self._hosts.items():
            silent_for = now - record.last_seen
            timeout = self.timeout_for(record.status)
            if record.state == HostState.UP and silent_for > timeout and now > self._quiet_until:
                record.state = HostState.LOST
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

    def longest_interval(self) -> float:
        """The longest heartbeat interval any host announced (0 before the first)."""
        return max((r.status.interval for r in self._hosts.values()), default=0.0)

    def get(self, host: str) -> HostRecord | None:
        return self._hosts.get(host)

    def views(self, now: float) -> list[HostView]:
        return [self.view(name, now) for name in sorted(self._hosts)]

    def view(self, host: str, now: float) -> HostView:
        record = self._hosts[host]
        status = record.status
        return HostView(
            host=host,
            state=record.state,
            health=status.health,
            last_seen_age=round(now - record.last_seen, 3),
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
        )


def _is_stale(current: HostStatus, incoming: HostStatus) -> bool:
    """A heartbeat older than the one we hold, from the same agent process
    (buffered heartbeats can arrive late after a reconnect)."""
    return incoming.boot_id == current.boot_id and incoming.seq <= current.seq
