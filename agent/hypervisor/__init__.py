"""The hypervisor seam: a Protocol and its backends (libvirt, simulated)."""

from pathlib import Path, PurePosixPath

from ferry.agent.config import AgentConfig
from ferry.agent.hypervisor.base import (
    Hypervisor,
    HypervisorUnavailable,
    JobStats,
    LeverRefused,
    MeasurementFailed,
    MigrationFailed,
    MigrationPlan,
    NodeFacts,
    VmInventory,
    VmNotFound,
)
from ferry.agent.hypervisor.disks import DiskError, ImagesFolder

__all__ = [
    "DiskError",
    "Hypervisor",
    "HypervisorUnavailable",
    "ImagesFolder",
    "JobStats",
    "LeverRefused",
    "MeasurementFailed",
    "MigrationFailed",
    "MigrationPlan",
    "NodeFacts",
    "VmInventory",
    "VmNotFound",
    "open_hypervisor",
]


def open_hypervisor(config: AgentConfig) -> Hypervisor:
    settings = config.hypervisor
    if settings.backend == "simulated":
        from ferry.agent.hypervisor.simulated import SimulatedHypervisor

        return SimulatedHypervisor(config.host, settings.simulated)
    from ferry.agent.hypervisor.libvirt_backend import LibvirtHypervisor

    images = ImagesFolder(
        host_dir=Path(config.images_dir),
        domain_dir=PurePosixPath(config.images_dir_in_domain or config.images_dir),
    )
    return LibvirtHypervisor(settings.uri, images)
