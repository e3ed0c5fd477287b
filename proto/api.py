"""The coordinator API (`ferry.api.<verb>`). Agent requests are in proto.agent."""

import enum
from typing import Annotated

import msgspec

from ferry.proto.convergence import Prediction
from ferry.proto.host import Capacity, HealthCheck, HealthState, Versions, VmInfo
from ferry.proto.names import HostName, NonNegative, SessionId, VmName
from ferry.proto.network import HostNetworks
from ferry.proto.session import MiBps, MigrateOptions, Session


class HostState(enum.StrEnum):
    UP = "up"
    LOST = "lost"


class HostsRequest(msgspec.Struct, frozen=True):
    """Empty today; filters get defaults when they arrive."""

    include_lost: bool = True


class HostView(msgspec.Struct, frozen=True):
    host: HostName
    state: HostState
    health: HealthState
    last_seen_age: float
    capacity: Capacity
    checks: list[HealthCheck] = []
    vms: list[VmInfo] = []
    versions: Versions = Versions()
    cpu_model: str = ""
    host_uuid: str = ""
    backend: str = ""
    arch: str = ""
    migrations_in_flight: NonNegative = 0
    # Marked draining (by `ferry drain` or an evacuation): no new VMs are placed here.
    draining: bool = False
    drain_reason: str = ""
    # VMs left out of `vms`: domains the agent could not describe, and entries the
    # coordinator could not read; one sentence each.
    vm_problems: list[str] = []
    networks: HostNetworks | None = None
    # How other hosts' libvirtd reach this one, as its own heartbeat announces: the
    # only peer URI a source is sent to (an offer naming another is refused).
    peer_uri: str = ""


class HostsReply(msgspec.Struct, frozen=True, tag="hosts"):
    hosts: list[HostView]
    # The coordinator leading now ("" while none does), and the one that answered.
    leader: str = ""
    answered_by: str = ""


class AgentStatusRequest(msgspec.Struct, frozen=True):
    pass


class MigrateRequest(msgspec.Struct, frozen=True):
    vm: VmName
    # Where the VM runs now; found from the hosts' reports when not given.
    source: HostName | None = None
    # Chosen automatically when not given; a named destination that declines fails the session.
    dest: HostName | None = None
    options: MigrateOptions = MigrateOptions()


class PlanReply(msgspec.Struct, frozen=True, tag="plan"):
    """`ferry migrate --dry-run`: where the VM would go and what pre-copy would do."""

    vm: VmName
    source: HostName
    # The destination the session would try first; None when no host can take the VM.
    dest: HostName | None
    candidates: list[HostName] = []
    # Why the other hosts would not take it, one sentence each.
    rejections: list[str] = []
    policy: str = "default"
    prediction: Prediction | None = None
    # Why there is no prediction, when there is none.
    note: str = ""


class SessionReply(msgspec.Struct, frozen=True, tag="session"):
    session: Session


class SessionsRequest(msgspec.Struct, frozen=True):
    vm: VmName | None = None
    # Finished sessions (completed, failed, cancelled) too.
    include_finished: bool = True
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 200


class SessionsReply(msgspec.Struct, frozen=True, tag="sessions"):
    sessions: list[Session]


class SessionRequest(msgspec.Struct, frozen=True):
    id: SessionId


class CancelRequest(msgspec.Struct, frozen=True):
    id: SessionId


class BandwidthChange(msgspec.Struct, frozen=True):
    id: SessionId
    bandwidth_mib: MiBps
