"""Health-triggered decisions. Pure: health reports and the time in, events and
the hosts to evacuate out.

- WARNING (or CRITICAL) stops new placements on the host (placement already
  refuses unhealthy hosts; the watch says so once, as an event).
- CRITICAL held for `debounce` seconds evacuates the host. A flap back to OK or
  WARNING within the debounce calls it off.
- An evacuated host is not undrained when it recovers: an operator decides. It
  is evacuated again only after it has been seen healthy in between.
- A lost host is never evacuated (its VMs cannot be live-migrated): losing its
  heartbeat calls a pending evacuation off.
"""

from dataclasses import dataclass, field

from ferry.proto.events import (
    CoordinatorEvent,
    EvacuationCalledOff,
    EvacuationPending,
    PlacementsResumed,
    PlacementsStopped,
)
from ferry.proto.host import HealthCheck, HealthState


@dataclass
class _Host:
    health: HealthState = HealthState.OK
    critical_since: float | None = None
    reason: str = ""
    # Evacuated in this CRITICAL spell: not again until it has been healthy.
    fired: bool = False


@dataclass
class Verdict:
    events: list[CoordinatorEvent] = field(default_factory=list)
    # (host, why) for each host to drain now, with evacuation priority.
    evacuate: list[tuple[str, str]] = field(default_factory=list)


def failing_checks(checks: list[HealthCheck], state: HealthState) -> str:
    failing = [f"{c.name}: {c.message}" if c.message else c.name for c in checks if c.state == state]
    return "; ".join(failing) or f"health {state}"


class HealthWatch:
    def __init__(self, debounce: float, *, enabled: bool = True) -> None:
        self._debounce = debounce
        self._enabled = enabled
        self._hosts: dict[str, _Host] = {}

    def observe(self, host: str, health: HealthState, checks: list[HealthCheck], now: float) -> Verdict:
        record = self._hosts.setdefault(host, _Host())
        out = Verdict()
        if health != record.health:
            if health == HealthState.OK:
                out.events.append(PlacementsResumed(host=host, reason=f"{host} is healthy again"))
            elif record.health == HealthState.OK:
                out.events.append(
                    PlacementsStopped(host=host, health=health, reason=failing_checks(checks, health))
                )
        if health == HealthState.CRITICAL:
            if record.critical_since is None and not record.fired:
                record.critical_since = now
                record.reason = failing_checks(checks, health)
                if self._enabled:
                    out.events.append(
                        EvacuationPending(host=host, reason=record.reason, due_at=now + self._debounce)
                    )
        else:
            if record.critical_since is not None and self._enabled:
                out.events.append(
                    EvacuationCalledOff(host=host, reason=f"{host} is {health} again before the debounce ended")
                )
            record.critical_since = None
            if health == HealthState.OK:
                # Only a healthy report re-arms: CRITICAL -> WARNING -> CRITICAL is one failing spell.
                record.fired = False
        record.health = health
        out.evacuate.extend(self._due(host, record, now))
        return out

    def seed(self, host: str, health: HealthState, *, evacuated: bool = False) -> None:
        """What a new leader knows already: the host's last health (so no event
        repeats what the previous leader announced) and whether it was evacuated
        in this failing spell (so it is not evacuated twice)."""
        record = self._hosts.setdefault(host, _Host())
        record.health = health
        record.fired = evacuated and health != HealthState.OK

    def lost(self, host: str) -> Verdict:
        record = self._hosts.get(host)
        out = Verdict()
        if record is not None and record.critical_since is not None:
            if self._enabled:
                out.events.append(
                    EvacuationCalledOff(
                        host=host, reason=f"{host} is lost: its VMs cannot be live-migrated, so it is not evacuated"
                    )
                )
            record.critical_since = None
        return out

    def tick(self, now: float) -> Verdict:
        out = Verdict()
        for host, record in self._hosts.items():
            out.evacuate.extend(self._due(host, record, now))
        return out

    def _due(self, host: str, record: _Host, now: float) -> list[tuple[str, str]]:
        if not self._enabled or record.critical_since is None or record.fired:
            return []
        if now - record.critical_since < self._debounce:
            return []
        record.fired = True
        record.critical_since = None
        held = self._debounce
        return [(host, f"health critical for {held:g} s: {record.reason}")]
