"""Coordinator API (`ferry.api.<verb>`) and agent requests (`ferry.agent.<host>.<verb>`)."""

import enum

import msgspec

from proto.host import Capacity, HealthCheck, HealthState, VmInfo, Versions
from proto.names import HostName


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


class HostsReply(msgspec.Struct, frozen=True, tag="hosts"):
    hosts: list[HostView]


class AgentStatusRequest(msgspec.Struct, frozen=True):
    pass
