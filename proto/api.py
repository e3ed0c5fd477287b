"""The coordinator API (`ferry.api.<verb>`). Agent requests are in proto.agent."""

import enum
from typing import Annotated

import msgspec

from ferry.proto.agent import DowntimeMs
from ferry.proto.convergence import Prediction
from ferry.proto.host import Capacity, HealthCheck, HealthState, Versions, VmInfo
from ferry.proto.names import HostName, NonNegative, SessionId, VmName
from ferry.proto.network import HostNetworks
from ferry.proto.session import MiBps, MigrateOptions, Session


class HostState(enum.StrEnum):
    UP = "up"
    LOST = "lost"


class RefusalCode(enum.StrEnum):
    """Refusals of the operator verbs below, beside proto/errors.py ErrorCode (the
    wire field `ErrorReply.code` is a str)."""

    # The destination named with `--to` is cordoned.
    HOST_CORDONED = "host_cordoned"
    # The session's migration is not running (queued, preparing, in post-copy or ended).
    NOT_RUNNING = "not_running"


class Cordon(msgspec.Struct, frozen=True):
    """A host no new VM is placed on (its KV record); what runs there stays."""

    host: HostName
    reason: str = ""
    # The operator identity that cordoned it, and when (wall clock).
    by: str = ""
    at: float = 0.0


class HostsRequest(msgspec.Struct, frozen=True):
    """One page of hosts in name order: those after `after` (a reply's
    `next_after`), at most `limit`, fewer when the reply would grow too big.
    `vms` false leaves the VM lists out (`vm_count` still says how many run):
    a summary of thousands of hosts in a few small replies."""

    include_lost: bool = True
    vms: bool = True
    after: Annotated[str, msgspec.Meta(max_length=300)] = ""
    limit: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 100_000


class HostView(msgspec.Struct, frozen=True, gc=False):
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
    # Cordoned (`ferry cordon`): no new VMs are placed here; the VMs it runs stay.
    cordoned: bool = False
    cordon: Cordon | None = None
    # VMs running or paused here (also when a summary leaves `vms` out).
    vm_count: NonNegative = 0


class HostsReply(msgspec.Struct, frozen=True, tag="hosts"):
    hosts: list[HostView]
    # The coordinator leading now ("" while none does), and the one that answered.
    leader: str = ""
    answered_by: str = ""
    # More hosts follow: ask again with `after = next_after`.
    more: bool = False
    next_after: str = ""
    # Hosts matching the request in all pages.
    total: NonNegative = 0


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
    # Hosts that could take it, and hosts ranked (`candidates` and `rejections`
    # show the first few of thousands).
    candidate_count: NonNegative = 0
    hosts_ranked: NonNegative = 0
    # The coordinator's own time: choosing the destination, and measuring the
    # guest's dirty rate on its source (most of a dry run).
    placement_ms: float = 0.0
    measure_ms: float = 0.0


class SessionReply(msgspec.Struct, frozen=True, tag="session"):
    session: Session


class SessionsRequest(msgspec.Struct, frozen=True):
    """One page of sessions: the newest `limit` that match (fewer when the reply
    would grow too big), sent oldest first; `before` (a reply's `next_before`)
    asks for the page of older ones."""

    vm: VmName | None = None
    # Finished sessions (completed, failed, cancelled) too.
    include_finished: bool = True
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 200
    # Sessions still going at this wall time or started after it (updated since); 0: any.
    since: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Where the previous page stopped (its `next_before`); "": the newest.
    before: Annotated[str, msgspec.Meta(max_length=100)] = ""


class SessionsReply(msgspec.Struct, frozen=True, tag="sessions"):
    sessions: list[Session]
    # Older sessions may match too: ask again with `before = next_before`.
    more: bool = False
    next_before: str = ""


class SessionRequest(msgspec.Struct, frozen=True):
    id: SessionId


class CancelRequest(msgspec.Struct, frozen=True):
    """The session `id`, or the one running session of `vm`; with both (a word that
    may be either, as `ferry cancel WORD` sends it), the session of that id when
    there is one, else the VM's."""

    id: SessionId | None = None
    vm: VmName | None = None


class BandwidthChange(msgspec.Struct, frozen=True):
    id: SessionId
    bandwidth_mib: MiBps


class CordonRequest(msgspec.Struct, frozen=True):
    host: HostName
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class UncordonRequest(msgspec.Struct, frozen=True):
    host: HostName


class CordonReply(msgspec.Struct, frozen=True, tag="cordon"):
    cordon: Cordon
    # False when nothing changed: the host was cordoned already (the first record stays).
    changed: bool = True


class ForceCompleteRequest(msgspec.Struct, frozen=True):
    id: SessionId


class DowntimeChange(msgspec.Struct, frozen=True):
    id: SessionId
    max_downtime_ms: DowntimeMs
