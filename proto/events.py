"""Events: what changed on a host (`ferry.host.<host>.event`) and what the
coordinator decided (`ferry.coordinator.event`). One tagged union each."""

import msgspec

from proto.host import HealthCheck, HealthState
from proto.names import HostName, SessionId, VmName
from proto.session import SessionState


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
    at: float = 0.0


CoordinatorEvent = HostAppeared | HostLost | HostReturned | SessionChanged
