"""Migration sessions: states, options and the record kept in JetStream KV."""

import enum
from typing import Annotated

import msgspec

from proto.names import HostName, NonNegative, SessionId, VmName


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


class Transition(msgspec.Struct, frozen=True):
    at: float
    state: SessionState
    code: str = ""
    reason: str = ""


class Progress(msgspec.Struct, frozen=True):
    elapsed_ms: NonNegative = 0
    data_total: NonNegative = 0
    data_processed: NonNegative = 0
    data_remaining: NonNegative = 0
    bandwidth_bps: NonNegative = 0
    dirty_rate_bps: NonNegative = 0
    iteration: NonNegative = 0
    expected_downtime_ms: NonNegative = 0


class Outcome(msgspec.Struct, frozen=True):
    total_time_ms: NonNegative = 0
    downtime_ms: NonNegative = 0
    data_transferred: NonNegative = 0


class Demand(msgspec.Struct, frozen=True):
    """What the VM holds on a host: reserved on the destination while the session runs."""

    vcpus: NonNegative = 0
    memory_mib: NonNegative = 0


class SessionCode(enum.StrEnum):
    """Why a session ended other than `completed` (declines add the destination's own codes)."""

    NO_DESTINATION = "no_destination"
    MIGRATION_FAILED = "migration_failed"
    SOURCE_UNREACHABLE = "source_unreachable"
    DEST_UNREACHABLE = "dest_unreachable"
    NOT_CONFIRMED = "not_confirmed"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


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
