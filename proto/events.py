"""Events: what changed on a host (`ferry.host.<host>.event`) and what the
coordinator decided (`ferry.coordinator.event`). One tagged union each."""

import msgspec

from ferry.proto.host import HealthCheck, HealthState
from ferry.proto.limits import Limits
from ferry.proto.names import HostName, SessionId, VmName
from ferry.proto.session import SessionState


class HealthChanged(msgspec.Struct, frozen=True, tag="health_changed"):
    host: HostName
    previous: HealthState
    current: HealthState
    checks: list[HealthCheck] = []
    at: float = 0.0


class DomainLifecycle(msgspec.Struct, frozen=True, tag="domain_lifecycle"):
    host: HostName
    vm: str
    event: str
    detail: str = ""
    at: float = 0.0


HostEvent = HealthChanged | DomainLifecycle


class HostLost(msgspec.Struct, frozen=True, tag="host_lost"):
    host: HostName
    silent_for: float
    reason: str
    # VMs the host last reported running: they cannot be live-migrated away.
    vms: list[VmName] = []
    at: float = 0.0


class HostReturned(msgspec.Struct, frozen=True, tag="host_returned"):
    host: HostName
    at: float = 0.0


class HostAppeared(msgspec.Struct, frozen=True, tag="host_appeared"):
    host: HostName
    at: float = 0.0


class SessionChanged(msgspec.Struct, frozen=True, tag="session_changed"):
    session_id: SessionId
    vm: VmName
    state: SessionState
    source: HostName
    dest: HostName | None = None
    code: str = ""
    reason: str = ""
    # The operator identity that asked for the session (drains: who started the drain).
    requested_by: str = ""
    at: float = 0.0


class SessionWaiting(msgspec.Struct, frozen=True, tag="session_waiting"):
    """A queued session cannot start yet; `reason` names the limit that holds it."""

    session_id: SessionId
    vm: VmName
    reason: str
    at: float = 0.0


class BandwidthShared(msgspec.Struct, frozen=True, tag="bandwidth_shared"):
    """A running migration's bandwidth was changed to share a host's budget."""

    session_id: SessionId
    vm: VmName
    bandwidth_mib: int
    reason: str
    at: float = 0.0


class PlacementsStopped(msgspec.Struct, frozen=True, tag="placements_stopped"):
    """The host's health is not OK: no new VMs are placed there."""

    host: HostName
    health: HealthState
    reason: str
    at: float = 0.0


class PlacementsResumed(msgspec.Struct, frozen=True, tag="placements_resumed"):
    host: HostName
    reason: str
    at: float = 0.0


class EvacuationPending(msgspec.Struct, frozen=True, tag="evacuation_pending"):
    """The host turned CRITICAL: it is evacuated if it stays so until `due_at`."""

    host: HostName
    reason: str
    due_at: float
    at: float = 0.0


class EvacuationCalledOff(msgspec.Struct, frozen=True, tag="evacuation_called_off"):
    host: HostName
    reason: str
    at: float = 0.0


class DrainStarted(msgspec.Struct, frozen=True, tag="drain_started"):
    host: HostName
    reason: str
    automatic: bool
    vms: int
    unplaced: int = 0
    # The operator identity that asked ("" for an evacuation the coordinator started).
    requested_by: str = ""
    at: float = 0.0


class VmPlaced(msgspec.Struct, frozen=True, tag="vm_placed"):
    """A drain started a session for one of its VMs."""

    host: HostName
    vm: VmName
    session_id: SessionId
    dest: HostName | None = None
    attempt: int = 1
    at: float = 0.0


class DrainRetry(msgspec.Struct, frozen=True, tag="drain_retry"):
    host: HostName
    vm: VmName
    attempt: int
    failed_on: HostName | None
    reason: str
    at: float = 0.0


class DrainGaveUp(msgspec.Struct, frozen=True, tag="drain_gave_up"):
    host: HostName
    vm: VmName
    attempts: int
    reason: str
    at: float = 0.0


class DrainFinished(msgspec.Struct, frozen=True, tag="drain_finished"):
    host: HostName
    moved: int
    gave_up: int
    gone: int = 0
    at: float = 0.0


class HostUndrained(msgspec.Struct, frozen=True, tag="host_undrained"):
    host: HostName
    # Sessions of the drain still queued were cancelled; running ones finish.
    cancelled: int = 0
    by: str = ""
    at: float = 0.0


class HostProbed(msgspec.Struct, frozen=True, tag="host_probed"):
    """What a lost host's peers found when asked whether its libvirtd answers:
    `verdict` unreachable (a fencing candidate), alive (its agent died, the host
    did not: never fenced) or unknown (too few peers could tell)."""

    host: HostName
    verdict: str
    reason: str
    peers: list[str] = []
    at: float = 0.0


class HostFenced(msgspec.Struct, frozen=True, tag="host_fenced"):
    """A lost host is off: its fence device confirmed it (`by` the agent), or an
    operator did (`ferry host confirm-dead`, `by` their identity)."""

    host: HostName
    by: str
    reason: str
    seconds: float = 0.0
    at: float = 0.0


class HostNotFenced(msgspec.Struct, frozen=True, tag="host_not_fenced"):
    """A lost host that may still run its VMs: nothing of it is restarted elsewhere
    until its fence works or an operator confirms it dead."""

    host: HostName
    reason: str
    at: float = 0.0


class HaPolicySet(msgspec.Struct, frozen=True, tag="ha_policy_set"):
    """A VM's HA restart priority (`ferry ha set`), or the cluster default (`vm` empty: `ferry ha default`)."""

    priority: str
    vm: str = ""
    by: str = ""
    at: float = 0.0


class VmRestartQueued(msgspec.Struct, frozen=True, tag="vm_restart_queued"):
    """An HA VM of a fenced host is to be started elsewhere (a restart session)."""

    restart_id: str
    vm: str
    host: HostName
    priority: str
    at: float = 0.0


class VmNotRestarted(msgspec.Struct, frozen=True, tag="vm_not_restarted"):
    """A VM of a fenced host that is not started elsewhere, and why (HA off, local disks, ...)."""

    vm: str
    host: HostName
    reason: str
    at: float = 0.0


class VmRestartStarting(msgspec.Struct, frozen=True, tag="vm_restart_starting"):
    restart_id: str
    vm: str
    dest: HostName
    at: float = 0.0


class VmRestarted(msgspec.Struct, frozen=True, tag="vm_restarted"):
    """It runs again: `seconds` from its host found lost to running on `dest`."""

    restart_id: str
    vm: str
    host: HostName
    dest: HostName
    seconds: float
    at: float = 0.0


class VmRestartFailed(msgspec.Struct, frozen=True, tag="vm_restart_failed"):
    restart_id: str
    vm: str
    host: HostName
    code: str
    reason: str
    at: float = 0.0


class VmsRetired(msgspec.Struct, frozen=True, tag="vms_retired"):
    """A fenced host came back: the definitions of its VMs that were restarted
    elsewhere were removed there, so nobody starts them twice."""

    host: HostName
    vms: list[str]
    # Running there as well as on their new host: two copies, not touched, loud.
    running: list[str] = []
    reason: str = ""
    at: float = 0.0


class HostCordoned(msgspec.Struct, frozen=True, tag="host_cordoned"):
    """No new VMs are placed on the host (`ferry cordon`); the VMs it runs stay."""

    host: HostName
    reason: str = ""
    by: str = ""
    at: float = 0.0


class HostUncordoned(msgspec.Struct, frozen=True, tag="host_uncordoned"):
    host: HostName
    by: str = ""
    at: float = 0.0


class MigrationForced(msgspec.Struct, frozen=True, tag="migration_forced"):
    """An operator forced a running migration to finish (`ferry force-complete`):
    `action` is "postcopy" or "pause" (proto/convergence.py ActionKind)."""

    session_id: SessionId
    vm: VmName
    action: str
    reason: str
    by: str = ""
    at: float = 0.0


class DowntimeSet(msgspec.Struct, frozen=True, tag="downtime_set"):
    """An operator set a running migration's max downtime (`ferry downtime`)."""

    session_id: SessionId
    vm: VmName
    max_downtime_ms: int
    by: str = ""
    at: float = 0.0


class LimitsChanged(msgspec.Struct, frozen=True, tag="limits_changed"):
    """An operator changed the admission limits (in force at once, on every coordinator)."""

    by: str
    before: Limits
    after: Limits
    at: float = 0.0


class HeartbeatRefused(msgspec.Struct, frozen=True, tag="heartbeat_refused"):
    """A heartbeat the coordinator would not believe (a sequence jump or an interval
    no agent sends); the host keeps what it last reported. Said once per reason."""

    host: HostName
    reason: str
    at: float = 0.0


class LeaderElected(msgspec.Struct, frozen=True, tag="leader_elected"):
    """A coordinator took the leader lease; it adopts every unfinished session."""

    leader: str
    term: int
    reason: str
    previous: str = ""
    at: float = 0.0


CoordinatorEvent = (
    LeaderElected
    | HostAppeared
    | HostLost
    | HostReturned
    | SessionChanged
    | SessionWaiting
    | BandwidthShared
    | PlacementsStopped
    | PlacementsResumed
    | EvacuationPending
    | EvacuationCalledOff
    | DrainStarted
    | VmPlaced
    | DrainRetry
    | DrainGaveUp
    | DrainFinished
    | HostUndrained
    | HostCordoned
    | HostUncordoned
    | HaPolicySet
    | HostProbed
    | HostFenced
    | HostNotFenced
    | VmRestartQueued
    | VmNotRestarted
    | VmRestartStarting
    | VmRestarted
    | VmRestartFailed
    | VmsRetired
    | MigrationForced
    | DowntimeSet
    | LimitsChanged
    | HeartbeatRefused
)
