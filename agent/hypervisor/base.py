"""The one seam between the agent and a hypervisor."""

from dataclasses import dataclass
from typing import Protocol

from proto.host import VmInfo


class HypervisorUnavailable(Exception):
    """The hypervisor cannot be reached right now (daemon down, socket gone)."""


@dataclass(frozen=True)
class NodeFacts:
    host_uuid: str
    cpu_model: str
    arch: str
    cpus: int
    memory_total_mib: int
    memory_free_mib: int
    libvirt_version: str
    qemu_version: str


class Hypervisor(Protocol):
    backend: str

    async def node_facts(self) -> NodeFacts:
        """Raises HypervisorUnavailable."""
        ...

    async def list_vms(self) -> list[VmInfo]:
        """Raises HypervisorUnavailable."""
        ...

    async def close(self) -> None: ...


def version_string(encoded: int) -> str:
    """libvirt encodes versions as major * 1,000,000 + minor * 1,000 + micro."""
    return f"{encoded // 1_000_000}.{encoded // 1000 % 1000}.{encoded % 1000}"
