"""Migration sessions: states, options and the record kept in JetStream KV."""

import enum
from typing import Annotated

import msgspec

from ferry.proto.convergence import PolicyAction, Prediction
from ferry.proto.names import HostName, NonNegative, SessionId, VmName
from ferry.proto.progress import Progress


class SessionState(enum.StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"
    MIGRATING = "migrating"
    POSTCOPY = "postcopy"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (SessionState.COMPLETED, SessionState.FAILED, SessionState.CANCELLED)


class StorageMode(enum.StrEnum):
    SHARED = "shared"  # disks are on storage both hosts reach
    COPY = "copy"  # local disks are copied along with memory
    AUTO = "auto"  # copy only the disks the destination cannot reach


class Encryption(enum.StrEnum):
    """How the migration stream crossed the network, as the source agent asked libvirt
    (VIR_MIGRATE_TLS or not). The wire fields stay `str`: "" is not known (nothing
    was sent, or an agent too old to say)."""

    TLS = "tls"
    NONE = "none"


MiBps = Annotated[int, msgspec.Meta(ge=0, le=100_000, description="MiB/s; 0 = unlimited")]
Milliseconds = Annotated[int, msgspec.Meta(ge=0, le=3_600_000)]
Priority = Annotated[int, msgspec.Meta(ge=-100, le=100)]


class MigrateOptions(msgspec.Struct, frozen=True):
    bandwidth_mib: MiBps = 0
    storage: StorageMode = StorageMode.AUTO
    tls: bool = True
    # QEMU's own default; a higher limit converges sooner but pauses the guest longer.
    max_downtime_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 300
    priority: Priority = 0
    # The convergence policy that steers the migration (proto/convergence.py POLICIES).
    policy: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,31}\Z")] = "default"
    # Post-copy moves the guest to the destination before all its memory is
    # there: if the network fails then, the guest is lost. Off unless asked for.
    allow_postcopy: bool = False
    # Overrides the policy's completion timeout (seconds per GiB of data to move).
    seconds_per_gib: Annotated[float, msgspec.Meta(gt=0, le=86_400)] | None = None


class Transition(msgspec.Struct, frozen=True):
    at: float
    state: SessionState
    code: str = ""
    reason: str = ""


class Outcome(msgspec.Struct, frozen=True):
    total_time_ms: NonNegative = 0
    downtime_ms: NonNegative = 0
    data_transferred: NonNegative = 0


class Demand(msgspec.Struct, frozen=True):
    """What the VM holds on a host: reserved on the destination while the session runs."""

    vcpus: NonNegative = 0
    memory_mib: NonNegative = 0


class SessionOrigin(enum.StrEnum):
    """Who asked for the session: admission puts evacuations ahead of everything else."""

    USER = "user"
    DRAIN = "drain"
    EVACUATION = "evacuation"


class SessionCode(enum.StrEnum):
    """Why a session ended other than `completed` (declines add the destination's own codes)."""

    NO_DESTINATION = "no_destination"
    MIGRATION_FAILED = "migration_failed"
    SOURCE_UNREACHABLE = "source_unreachable"
    DEST_UNREACHABLE = "dest_unreachable"
    NOT_CONFIRMED = "not_confirmed"
    CANCELLED = "cancelled"
    INTERNAL = "internal"
    # The convergence policy stopped a migration that would not finish in time.
    NOT_CONVERGING = "not_converging"
    # The session did not leave a state within that state's deadline.
    TIMED_OUT = "timed_out"
    # The source agent refused an unencrypted stream (its migration.require_tls).
    TLS_REQUIRED = "tls_required"
    # The source agent refused to dial the destination's peer URI (its allowed schemes).
    PEER_REFUSED = "peer_refused"
    # The destination's offer named a peer URI other than the one its heartbeat
    # announces: whoever answered `prepare` is not vouched for, so no source dials it.
    PEER_MISMATCH = "peer_mismatch"


class Session(msgspec.Struct, frozen=True):
    id: SessionId
    vm: VmName
    source: HostName
    options: MigrateOptions
    state: SessionState
    created_at: float
    updated_at: float
    dest: HostName | None = None
    # The user named the destination: a decline fails the session instead of trying another.
    dest_requested: bool = False
    candidates_tried: list[HostName] = []
    history: list[Transition] = []
    code: str = ""
    reason: str = ""
    progress: Progress | None = None
    outcome: Outcome | None = None
    demand: Demand = Demand()
    # Device names of the local disks copied along with memory.
    copy_disks: list[str] = []
    # Set by `cancel` while the source still runs the job; the session ends
    # `cancelled` once the source confirms the abort (or `completed` if it had
    # already finished).
    cancel_requested: bool = False
    origin: SessionOrigin = SessionOrigin.USER
    # The operator identity that asked (for a drain's sessions: who started the
    # drain; "" for the coordinator's own evacuations), from the subject NATS let
    # it publish on; `cancelled_by` likewise for a cancel.
    requested_by: str = ""
    cancelled_by: str = ""
    # The host whose drain (or evacuation) started this session.
    drain_host: HostName | None = None
    # Hosts this session must not go to (earlier attempts of a drain failed there).
    avoid: list[HostName] = []
    # Why the session is still queued: which limit holds it back.
    waiting: str = ""
    # The bandwidth the source was last told: the user's cap, or less when the
    # hosts' bandwidth budget is shared with other migrations (0 = unlimited).
    bandwidth_applied_mib: NonNegative = 0
    # What plain pre-copy was expected to do, from the guest's measured dirty rate.
    prediction: Prediction | None = None
    # Every step the convergence policy took, with the sample that caused it.
    steering: list[PolicyAction] = []
    # How the stream was protected, as the source reported it (Encryption: "tls",
    # "none"); "" until the source's result arrived, or when it never said.
    encryption: str = ""
