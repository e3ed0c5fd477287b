"""Leadership: the lease one coordinator holds in KV, the coordinators that take
part, and `ferry status`, which shows both."""

import enum

import msgspec

from ferry.proto.limits import Limits
from ferry.proto.names import NonNegative


class Lease(msgspec.Struct, frozen=True):
    """The leader lease (bucket `ferry_leader`, key `lease`), changed only by
    compare-and-set. Standbys time it by their own clock, from the moment they
    saw its revision change: the wall times here are for people."""

    holder: str
    # A token per process: a coordinator that restarted is not the one that held the lease.
    instance: str
    term: NonNegative
    since: float
    renewed_at: float
    # A standby may take the lease when it has seen no renewal for this long.
    lease_seconds: float


class Role(enum.StrEnum):
    LEADER = "leader"
    STANDBY = "standby"


class Member(msgspec.Struct, frozen=True):
    """A coordinator taking part (key `member.<name>`), refreshed every few seconds."""

    name: str
    instance: str
    role: Role
    version: str
    started_at: float
    seen_at: float
    # The NATS server it is connected to.
    server: str = ""


class MemberView(msgspec.Struct, frozen=True):
    name: str
    role: Role
    version: str
    started_at: float
    # Seconds since it last wrote its member record.
    seen_age: float
    server: str = ""


class BucketView(msgspec.Struct, frozen=True):
    name: str
    replicas: NonNegative
    # Servers holding a current copy (the leader of its stream included).
    current: NonNegative = 0
    leader: str = ""


class StatusRequest(msgspec.Struct, frozen=True):
    pass


class StatusReply(msgspec.Struct, frozen=True, tag="status"):
    # The coordinator that answered, and what it is.
    answered_by: str
    role: Role
    leader: Lease | None = None
    # Seconds since the leader last renewed (by the lease's wall time).
    lease_age: float | None = None
    coordinators: list[MemberView] = []
    nats_server: str = ""
    nats_cluster: str = ""
    # Servers in the NATS cluster that the connected server knows of.
    nats_servers: list[str] = []
    buckets: list[BucketView] = []
    hosts_up: NonNegative = 0
    hosts_lost: NonNegative = 0
    draining: list[str] = []
    limits: Limits = Limits()
