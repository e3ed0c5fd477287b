"""Drains: emptying a host, by an operator (`ferry drain`) or on failing health.

The record lives in JetStream KV under the host's name; its presence is the
host's draining mark (no new VMs are placed there) until `ferry undrain`.
"""

import enum
from typing import Annotated

import msgspec

from ferry.proto.convergence import Prediction
from ferry.proto.names import HostName, NonNegative, SessionId, VmName
from ferry.proto.session import Priority


class DrainState(enum.StrEnum):
    RUNNING = "running"  # VMs are still being moved
    DONE = "done"  # every VM is moved or given up; the host stays marked draining


class ItemState(enum.StrEnum):
    PLANNED = "planned"  # no session yet
    QUEUED = "queued"  # a session waits for admission
    MOVING = "moving"  # a session is preparing or migrating
    RETRYING = "retrying"  # an attempt failed; another starts after a pause
    MOVED = "moved"
    GAVE_UP = "gave_up"  # attempts exhausted, or cannot be moved at all
    GONE = "gone"  # left the host some other way (shut down, moved by someone else)

    @property
    def final(self) -> bool:
        return self in (ItemState.MOVED, ItemState.GAVE_UP, ItemState.GONE)


class DrainItem(msgspec.Struct, frozen=True):
    vm: VmName
    state: ItemState = ItemState.PLANNED
    # Planned destination, then the one the current or last session used.
    dest: HostName | None = None
    session_id: SessionId | None = None
    attempts: NonNegative = 0
    # Destinations where an attempt failed: later attempts avoid them.
    failed_on: list[HostName] = []
    # The latest reason: why unplaced, why an attempt failed, why given up.
    reason: str = ""
    memory_mib: NonNegative = 0
    vcpus: NonNegative = 0
    # Wall-clock time before which a retry does not start.
    retry_at: float = 0.0
    # Dry runs: what plain pre-copy would do for this VM (see proto/convergence.py).
    prediction: Prediction | None = None


class Drain(msgspec.Struct, frozen=True):
    host: HostName
    state: DrainState
    started_at: float
    updated_at: float
    # Who or what started it: "operator" or the failing health checks.
    reason: str = "operator"
    automatic: bool = False
    # The operator identity that asked, as NATS proved it (the subject it came under).
    requested_by: str = ""
    priority: Priority = 0
    max_attempts: NonNegative = 3
    # The convergence policy of the drain's sessions.
    policy: str = "default"
    items: list[DrainItem] = []
    finished_at: float | None = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            out[item.state] = out.get(item.state, 0) + 1
        return out


class DrainRequest(msgspec.Struct, frozen=True):
    host: HostName
    # Plan only: where each VM would go, nothing is marked or moved.
    dry_run: bool = False
    priority: Priority = 0
    reason: Annotated[str, msgspec.Meta(max_length=200)] = ""
    policy: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,31}\Z")] = "default"


class DrainReply(msgspec.Struct, frozen=True, tag="drain"):
    drain: Drain
    dry_run: bool = False


class UndrainRequest(msgspec.Struct, frozen=True):
    host: HostName


class DrainsRequest(msgspec.Struct, frozen=True):
    host: HostName | None = None


class DrainsReply(msgspec.Struct, frozen=True, tag="drains"):
    drains: list[Drain]
