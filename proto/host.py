"""What an agent says about its host: the heartbeat on `ferry.host.<host>.status`."""

import enum
import re

import msgspec

from ferry.proto.names import HostName, NonNegative, Seconds, VmName


class HealthState(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _HEALTH_RANK[self]

    @classmethod
    def worst(cls, states: "list[HealthState]") -> "HealthState":
        return max(states, key=lambda s: s.rank, default=cls.OK)


_HEALTH_RANK = {HealthState.OK: 0, HealthState.WARNING: 1, HealthState.CRITICAL: 2}


class HealthCheck(msgspec.Struct, frozen=True):
    name: str
    state: HealthState
    message: str = ""


class Versions(msgspec.Struct, frozen=True):
    libvirt: str = ""
    qemu: str = ""
    agent: str = ""


class VmState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    OTHER = "other"


class VmInfo(msgspec.Struct, frozen=True):
    name: VmName
    uuid: str = ""
    vcpus: NonNegative = 0
    memory_mib: NonNegative = 0
    state: VmState = VmState.RUNNING
    persistent: bool = True


class Capacity(msgspec.Struct, frozen=True):
    cpus: NonNegative
    memory_total_mib: NonNegative
    memory_free_mib: NonNegative
    # Sums over the running VMs: what placement reserves against.
    vcpus_used: NonNegative = 0
    memory_used_mib: NonNegative = 0


class HostStatus(msgspec.Struct, frozen=True, tag="status"):
    host: HostName
    # Increases by one per heartbeat of one agent process; `boot_id` changes
    # when the agent restarts, so a lower seq from a new boot is not stale.
    seq: NonNegative
    boot_id: str
    sent_at: float
    interval: Seconds
    capacity: Capacity
    health: HealthState = HealthState.OK
    checks: list[HealthCheck] = []
    vms: list[VmInfo] = []
    versions: Versions = Versions()
    host_uuid: str = ""
    cpu_model: str = ""
    arch: str = ""
    backend: str = ""
    # How other hosts' hypervisors reach this one for peer-to-peer migration.
    peer_uri: str = ""
    migration_address: str = ""
    migrations_in_flight: NonNegative = 0

    def content_key(self) -> tuple:
        """Everything but the clock-driven fields: a change here triggers a heartbeat now."""
        return (
            self.capacity.cpus,
            self.capacity.memory_total_mib,
            self.capacity.vcpus_used,
            self.capacity.memory_used_mib,
            self.health,
            tuple(self.checks),
            tuple(self.vms),
            self.versions,
            self.migrations_in_flight,
        )


def version_tuple(version: str, width: int = 3) -> tuple[int, ...]:
    """Leading digits of each dot-separated piece: "8.2.0-rc1" -> (8, 2, 0).
    Padded with zeros to `width` pieces, so "9.0" and "9.0.0" compare equal."""
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d*", piece).group()
        parts.append(int(digits) if digits else 0)
    parts += [0] * (width - len(parts))
    return tuple(parts)
