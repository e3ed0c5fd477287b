"""What the session shell needs from the world, as protocols: the agents, the
record store, the VM claims, the event sink and the clock. The daemon passes
the real ones (NATS, JetStream KV); tests pass the fakes in tests/support/."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from ferry.proto.agent import (
    AbortReply,
    BandwidthRequest,
    CommitReply,
    DirtyRate,
    DowntimeRequest,
    ForceCompleteRequest,
    JobsReply,
    JobsRequest,
    MeasureRequest,
    MigrateRequest,
    MigrationState,
    PrepareReply,
    PrepareRequest,
    RollbackReply,
    SessionRef,
    SteerReply,
    VmDescription,
)
from ferry.proto.api import HostView
from ferry.proto.events import CoordinatorEvent
from ferry.proto.limits import Limits
from ferry.proto.session import Session


class AgentPort(Protocol):
    """Requests to one host's agent; failures are FerryErrors with a sentence."""

    async def describe(self, host: str, vm: str) -> VmDescription: ...
    async def measure(self, host: str, request: MeasureRequest) -> DirtyRate: ...
    async def prepare(self, host: str, request: PrepareRequest) -> PrepareReply: ...
    async def migrate(self, host: str, request: MigrateRequest) -> MigrationState: ...
    async def abort(self, host: str, ref: SessionRef) -> AbortReply: ...
    async def bandwidth(self, host: str, request: BandwidthRequest) -> MigrationState: ...
    async def force_complete(self, host: str, request: ForceCompleteRequest) -> SteerReply: ...
    async def downtime(self, host: str, request: DowntimeRequest) -> SteerReply: ...
    async def commit(self, host: str, ref: SessionRef) -> CommitReply: ...
    async def rollback(self, host: str, ref: SessionRef) -> RollbackReply: ...
    async def jobs(self, host: str, request: JobsRequest) -> JobsReply: ...


class RecordStore(Protocol):
    """Session records; `change` is a compare-and-set (FerryError CONFLICT when it loses)."""

    async def create(self, session: Session) -> int: ...
    async def get(self, session_id: str) -> tuple[Session, int]: ...
    async def change(self, session_id: str, change: Callable[[Session], Session]) -> Session: ...
    async def all(self) -> list[Session]: ...


class ClaimStore(Protocol):
    """One session per VM at a time."""

    async def claim(self, vm: str, session_id: str) -> None: ...
    async def release(self, vm: str, session_id: str) -> None: ...
    async def holding_sessions(self) -> set[str]:
        """The ids of the sessions holding a claim now."""
        ...


Emit = Callable[[list[CoordinatorEvent]], Awaitable[None]]
Hosts = Callable[[], list[HostView]]
LimitsNow = Callable[[], Limits]


@dataclass(frozen=True)
class Clock:
    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)
