"""High availability: which VMs are restarted elsewhere when their host dies, and first.

A VM's HA priority is kept in JetStream KV (`ferry ha set`), so it outlives
the host and the coordinator that wrote it. VMs without a policy of their own
follow the cluster default (`ferry ha default`), which is `off` until an
operator says otherwise: nothing is restarted that nobody asked for.
"""

import enum
from typing import Annotated

import msgspec

from ferry.proto.names import HostName, NonNegative, VmName
from ferry.proto.network import Attachment

# A domain's XML as it is kept and sent to restart it (libvirt's run to a few KiB;
# a restart request carrying one stays under the agents' request cap).
DOMAIN_XML_MAX = 200 * 1024
RestartId = Annotated[str, msgspec.Meta(pattern=r"^r[a-z0-9]{6,40}\Z", description="restart id")]


class HaPriority(enum.StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    # Never restarted elsewhere: reported when its host dies.
    OFF = "off"


class HaPolicy(msgspec.Struct, frozen=True):
    """A VM's policy (`vm` empty: the cluster default), who set it and when (wall clock)."""

    priority: HaPriority
    vm: str = ""
    by: str = ""
    at: float = 0.0
    # In a reply: the VM has no policy of its own, this is the default's.
    from_default: bool = False


class HaSetRequest(msgspec.Struct, frozen=True):
    """`ferry ha set VM --priority P`."""

    vm: VmName
    priority: HaPriority


class HaDefaultRequest(msgspec.Struct, frozen=True):
    """`ferry ha default P`: the priority of every VM without a policy of its own."""

    priority: HaPriority


class HaRequest(msgspec.Struct, frozen=True):
    """The policies of these VMs (none named: every policy set)."""

    vms: Annotated[list[VmName], msgspec.Meta(max_length=1000)] = []


class DefinitionKept(msgspec.Struct, frozen=True):
    vm: str
    host: str
    at: float


class HaReply(msgspec.Struct, frozen=True, tag="ha"):
    default: HaPolicy
    # By VM name. Named in the request and without a policy of its own: the default, with its vm filled in.
    policies: list[HaPolicy] = []
    # The write changed nothing (the same priority was already set).
    changed: bool = True
    # For the VMs in `policies`: where and when the copy of their definition that a
    # restart would use was taken (VMs without a copy are left out).
    definitions: list[DefinitionKept] = []



class FenceState(enum.StrEnum):
    # Its fence device confirmed it off.
    FENCED = "fenced"
    # An operator checked by hand and said so (`ferry host confirm-dead`).
    CONFIRMED_DEAD = "confirmed_dead"
    # Not fenced: no device, the device failed, or the cluster looked partitioned.
    FAILED = "failed"

    @property
    def dead(self) -> bool:
        """Whether its VMs may be started elsewhere."""
        return self in (FenceState.FENCED, FenceState.CONFIRMED_DEAD)


class FenceRecord(msgspec.Struct, frozen=True):
    """The last word on a lost host's power, kept in KV (bucket ferry_fences)."""

    host: str
    state: FenceState
    reason: str
    # The fence agent, or the operator identity that confirmed.
    by: str = ""
    at: float = 0.0
    seconds: float = 0.0
    # The restarts of its HA VMs are recorded (a leader that dies before plans them again).
    restarts_planned: bool = False
    # When the coordinator found the host silent (wall clock): restart times count from here.
    lost_at: float = 0.0


class ConfirmDeadRequest(msgspec.Struct, frozen=True):
    """`ferry host confirm-dead HOST`: the operator checked that the host is off."""

    host: HostName
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class FenceReply(msgspec.Struct, frozen=True, tag="fence"):
    record: FenceRecord


class DomainCopy(msgspec.Struct, frozen=True):
    """What is needed to start a VM elsewhere once its host is dead, kept in KV
    (bucket ferry_domains) from its host's `describe`, refreshed when it changes."""

    vm: str
    uuid: str
    host: str
    # The digest the host's report gives for this definition (proto/host.py VmInfo.definition).
    digest: str
    # The persistent definition (libvirt's inactive, migratable XML; no secrets).
    xml: str
    vcpus: NonNegative = 0
    memory_mib: NonNegative = 0
    # Disks on the host's own storage: such a VM cannot start anywhere else.
    local_disks: list[str] = []
    # What its interfaces need on whichever host starts it (placement checks hosts against it).
    attachments: list[Attachment] = []
    at: float = 0.0


class RestartState(enum.StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    # Runs on its new host (terminal).
    RUNNING = "running"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (RestartState.RUNNING, RestartState.FAILED)


class RestartStep(msgspec.Struct, frozen=True):
    at: float
    state: RestartState
    dest: str = ""
    reason: str = ""


class Restart(msgspec.Struct, frozen=True):
    """A restart session: one HA VM of a dead host started on another (KV ferry_restarts)."""

    id: str
    vm: str
    # The dead host, and the fence record that let the restart happen.
    host: str
    priority: HaPriority
    state: RestartState
    created_at: float
    updated_at: float
    lost_at: float = 0.0
    fenced_by: str = ""
    dest: str = ""
    candidates_tried: list[str] = []
    history: list[RestartStep] = []
    code: str = ""
    reason: str = ""
    # From the host found lost to the VM running again (seconds), once it runs.
    seconds: float = 0.0
    vcpus: NonNegative = 0
    memory_mib: NonNegative = 0
    # Why it is still queued (a limit, or no room yet).
    waiting: str = ""


class RestartsRequest(msgspec.Struct, frozen=True):
    """`ferry ha restarts`: restart sessions, newest first (`host`: of one dead host)."""

    host: HostName | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class RestartsReply(msgspec.Struct, frozen=True, tag="restarts"):
    restarts: list[Restart] = []


class RestartRequest(msgspec.Struct, frozen=True):
    """Coordinator -> agent: define this VM from its kept XML and start it here.
    Idempotent: the same restart again reports where the first one stands."""

    restart_id: RestartId
    vm: VmName
    uuid: Annotated[str, msgspec.Meta(max_length=64)]
    xml: Annotated[str, msgspec.Meta(max_length=DOMAIN_XML_MAX)]


class RestartReply(msgspec.Struct, frozen=True, tag="restarted"):
    vm: str
    host: str
    # It runs here now (started by this request, or it already ran).
    running: bool
    detail: str = ""


class RetiredVm(msgspec.Struct, frozen=True):
    vm: VmName
    uuid: Annotated[str, msgspec.Meta(max_length=64)]


class RetireRequest(msgspec.Struct, frozen=True):
    """Coordinator -> a fenced host that came back: these VMs were restarted elsewhere;
    remove their definitions here (disks stay) so that nobody starts them twice."""

    vms: Annotated[list[RetiredVm], msgspec.Meta(max_length=10_000)]


class RetireReply(msgspec.Struct, frozen=True, tag="retired"):
    host: str
    # Definitions removed (shut off here, as they should be).
    retired: list[str] = []
    # Running here as well as elsewhere: not touched, and said loudly.
    running: list[str] = []
    # No domain of that UUID here (removed already).
    missing: list[str] = []
