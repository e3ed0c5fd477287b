"""Requests the coordinator sends an agent (`ferry.agent.<host>.<verb>`) and what an
agent publishes about a session (`ferry.host.<host>.session.<id>`).

Every request that belongs to a session carries its id and is idempotent: the
same request twice has the effect of one.
"""

import enum
from typing import Annotated

import msgspec

from ferry.proto.convergence import PolicyAction
from ferry.proto.ha import DOMAIN_XML_MAX
from ferry.proto.host import Versions, VmState
from ferry.proto.names import HostName, NonNegative, SessionId, VmName
from ferry.proto.network import Attachment
from ferry.proto.session import MiBps, MigrateOptions, Outcome, Progress

LeaseSeconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class DiskInfo(msgspec.Struct, frozen=True):
    target: str  # device name in the guest, e.g. "vda"
    path: str  # as the hypervisor (and the domain XML) names it
    format: str = "raw"
    capacity_bytes: NonNegative = 0
    # On this host's own storage (copied along when the storage mode allows),
    # as opposed to storage other hosts reach at the same path.
    local: bool = False


class VmDescription(msgspec.Struct, frozen=True, tag="vm"):
    """What a destination needs to judge an incoming VM."""

    name: VmName
    uuid: str
    vcpus: NonNegative
    memory_mib: NonNegative
    arch: str = ""
    # The hypervisor's domain type ("kvm", "qemu"): CPU models are judged per type.
    virt_type: str = ""
    # The guest's <cpu> element from its migratable XML; "" when it has none.
    cpu_xml: str = ""
    disks: list[DiskInfo] = []
    running: bool = True
    # The guest's dirty rate as last measured on its host (0 = never measured).
    dirty_rate_bps: NonNegative = 0
    dirty_rate_at: float = 0.0
    # What its interfaces need on the destination (libvirt networks, bridges, devices).
    attachments: list[Attachment] = []
    # Asked for (DescribeRequest.definition): its persistent definition, and its digest
    # as the host's report gives it (proto/host.py VmInfo.definition).
    domain_xml: Annotated[str, msgspec.Meta(max_length=DOMAIN_XML_MAX)] = ""
    definition: str = ""


class DescribeRequest(msgspec.Struct, frozen=True):
    vm: VmName
    # Also send the persistent definition (the coordinator keeps it for HA restarts).
    definition: bool = False


class ProbeRequest(msgspec.Struct, frozen=True):
    """Does the libvirtd at `uri` (a lost host's peer URI) accept connections from
    this host? Asked of a lost host's peers before it is fenced: a host whose agent
    died while its libvirtd runs is alive, and is not fenced."""

    uri: Annotated[str, msgspec.Meta(max_length=300)]
    seconds: Annotated[float, msgspec.Meta(ge=0.1, le=30)] = 5.0


class ProbeReply(msgspec.Struct, frozen=True, tag="probe"):
    host: HostName  # the peer that probed
    uri: str
    answered: bool
    # What was tried and what came of it, as a sentence.
    detail: str = ""
    seconds: float = 0.0


class MeasureRequest(msgspec.Struct, frozen=True):
    """Measure how fast the guest dirties its memory now (it takes `seconds`)."""

    vm: VmName
    seconds: Annotated[float, msgspec.Meta(ge=1, le=60)] = 1.0


class DirtyRate(msgspec.Struct, frozen=True, tag="dirty_rate"):
    vm: VmName
    host: HostName
    bps: NonNegative
    seconds: float
    at: float


class PrepareRequest(msgspec.Struct, frozen=True):
    session_id: SessionId
    vm: VmDescription
    source: HostName
    source_versions: Versions
    options: MigrateOptions
    # The reservation lapses if no migration has started by then.
    lease_seconds: LeaseSeconds = 30.0


class Offer(msgspec.Struct, frozen=True, tag="offer"):
    session_id: SessionId
    host: HostName
    peer_uri: str
    migration_address: str = ""
    # Device names of the local disks the destination created for storage copy.
    copy_disks: list[str] = []
    lease_expires_at: float = 0.0


class DeclineCode(enum.StrEnum):
    """Why a destination declines an incoming VM (the wire field stays `str`, so a
    newer agent's codes still decode)."""

    VM_EXISTS = "vm_exists"
    ARCH_MISMATCH = "arch_mismatch"
    VERSION_OLDER = "version_older"
    CPU_INCOMPATIBLE = "cpu_incompatible"
    NETWORK_MISSING = "network_missing"
    NO_CAPACITY = "no_capacity"
    STORAGE_UNREACHABLE = "storage_unreachable"
    HYPERVISOR_UNAVAILABLE = "hypervisor_unavailable"


class Decline(msgspec.Struct, frozen=True, tag="decline"):
    session_id: SessionId
    host: HostName
    code: str
    reason: str


PrepareReply = Offer | Decline


class MigrateRequest(msgspec.Struct, frozen=True):
    session_id: SessionId
    vm: VmName
    dest: HostName
    peer_uri: str
    migration_address: str = ""
    options: MigrateOptions = MigrateOptions()
    copy_disks: list[str] = []


class SessionRef(msgspec.Struct, frozen=True):
    """For verbs that only need to know the session: abort, commit, rollback."""

    session_id: SessionId
    vm: VmName


class BandwidthRequest(msgspec.Struct, frozen=True):
    session_id: SessionId
    bandwidth_mib: MiBps


# The longest pause a migration may end with, as an operator sets it (as MigrateOptions.max_downtime_ms).
DowntimeMs = Annotated[int, msgspec.Meta(ge=1, le=60_000)]


class ForceCompleteRequest(msgspec.Struct, frozen=True):
    """Finish the running migration now: post-copy if the session allows it, else
    pause the guest for the last pass (agent/steering.py decides)."""

    session_id: SessionId
    # The operator identity that asked, for the action's reason.
    requested_by: str = ""


class DowntimeRequest(msgspec.Struct, frozen=True):
    """Set the running migration's max downtime (the policy's ramp stays below it)."""

    session_id: SessionId
    max_downtime_ms: DowntimeMs
    requested_by: str = ""


class SteerReply(msgspec.Struct, frozen=True, tag="steer"):
    """What the source did for an operator's request (also published as SessionSteered)."""

    session_id: SessionId
    action: PolicyAction


class SessionProgress(msgspec.Struct, frozen=True, tag="progress"):
    session_id: SessionId
    vm: VmName
    host: HostName
    at: float
    progress: Progress


class SessionSteered(msgspec.Struct, frozen=True, tag="steered"):
    """The convergence policy acted on a running migration."""

    session_id: SessionId
    vm: VmName
    host: HostName
    action: PolicyAction


class SessionResult(msgspec.Struct, frozen=True, tag="result"):
    session_id: SessionId
    vm: VmName
    host: HostName
    at: float
    ok: bool
    # The migration stopped because it was asked to (abort), not because it failed.
    aborted: bool = False
    code: str = ""
    reason: str = ""
    outcome: Outcome | None = None
    last_progress: Progress | None = None
    # Every step the convergence policy took, in order.
    actions: list[PolicyAction] = []
    # What the source asked libvirt for (Encryption: "tls", "none"); "" when no job
    # was started, or from an older agent.
    encryption: str = ""


SessionUpdate = SessionProgress | SessionSteered | SessionResult


class MigrationState(msgspec.Struct, frozen=True, tag="migration"):
    """The source's answer to migrate (idempotent) and bandwidth: where the job stands."""

    session_id: SessionId
    running: bool
    result: SessionResult | None = None
    bandwidth_mib: MiBps = 0


class AbortReply(msgspec.Struct, frozen=True, tag="abort"):
    session_id: SessionId
    # False when there was nothing to abort (not started, or already finished).
    aborted: bool
    message: str = ""


class CommitReply(msgspec.Struct, frozen=True, tag="commit"):
    session_id: SessionId
    host: HostName
    vm_running: bool
    # What the host removed (copied-away local images on the source).
    removed: list[str] = []
    # The destination's statistics of the finished job (downtime, total time).
    outcome: Outcome | None = None


class RollbackReply(msgspec.Struct, frozen=True, tag="rollback"):
    session_id: SessionId
    host: HostName
    removed: list[str] = []
    message: str = ""


class JobRole(enum.StrEnum):
    SOURCE = "source"
    DESTINATION = "destination"


class JobsRequest(msgspec.Struct, frozen=True):
    """What an agent knows of sessions, and where VMs are on its host now.

    `session_ids` empty: every session in its journal. `vms`: VMs whose state
    on this host the coordinator wants too (a session the agent never heard of
    still has a VM that is somewhere)."""

    session_ids: list[SessionId] = []
    vms: list[VmName] = []


class JobReport(msgspec.Struct, frozen=True, tag="job"):
    """One session as this host knows it: from libvirt now and from its journal."""

    session_id: SessionId
    vm: VmName
    role: JobRole
    # libvirt runs a migration job of this VM here now (outgoing on a source,
    # incoming on a destination).
    job_running: bool = False
    # Source: how the migration ended (None while it runs, or if it never started).
    result: SessionResult | None = None
    # Source: the migrate request was taken (journaled) and a job started for it.
    started: bool = False
    # Destination: the reservation held for the session (None once released).
    offer: Offer | None = None
    # Destination: images this session created here (removed only by its rollback).
    created_images: list[str] = []
    last_progress: Progress | None = None


class VmPlace(msgspec.Struct, frozen=True):
    vm: VmName
    # None: no domain of that name on this host.
    state: VmState | None = None


class JobsReply(msgspec.Struct, frozen=True, tag="jobs"):
    host: HostName
    jobs: list[JobReport] = []
    vms: list[VmPlace] = []
