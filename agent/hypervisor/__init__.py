"""The hypervisor seam: a Protocol and its backends (libvirt, simulated)."""

from agent.config import HypervisorSettings
from agent.hypervisor.base import Hypervisor, HypervisorUnavailable, NodeFacts

__all__ = ["Hypervisor", "HypervisorUnavailable", "NodeFacts", "open_hypervisor"]


def open_hypervisor(host: str, settings: HypervisorSettings) -> Hypervisor:
    if settings.backend == "simulated":
        from agent.hypervisor.simulated import SimulatedHypervisor

        return SimulatedHypervisor(host, settings.simulated)
    from agent.hypervisor.libvirt_backend import LibvirtHypervisor

    return LibvirtHypervisor(settings.uri)
