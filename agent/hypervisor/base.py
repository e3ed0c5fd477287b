"""The one seam between the agent and a hypervisor."""

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from ferry.proto.agent import DiskInfo, VmDescription
from ferry.proto.host import UnreadableVm, VmInfo, VmState
from ferry.proto.network import HostNetworks


class HypervisorUnavailable(Exception):
    """The hypervisor cannot be reached right now (daemon down, socket gone)."""


class VmNotFound(Exception):
    """The hypervisor has no domain of that name."""


class MigrationFailed(Exception):
    """The hypervisor ended the migration job with an error (or because it was aborted)."""


class LeverRefused(Exception):
    """The hypervisor refused to change a running migration (no job any more, post-copy
    not armed at its start, a value QEMU rejects). The message is a sentence for people."""


class StartRefused(Exception):
    """The hypervisor would not define or start the domain (a disk another host's
    guest holds, a device missing here). The message is the hypervisor's own words."""


class MeasurementFailed(Exception):
    """The hypervisor could not measure the guest (not running, unsupported, busy, timed out).
    The message is a sentence for people."""


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


@dataclass(frozen=True)
class VmInventory:
    """The host's domains: those described, and those that could not be (with why)."""

    vms: list[VmInfo]
    unreadable: list[UnreadableVm] = field(default_factory=list)


@dataclass(frozen=True)
class MigrationPlan:
    """How the source hands a VM to the destination."""

    peer_uri: str
    migration_address: str = ""
    tls: bool = True
    bandwidth_mib: int = 0
    max_downtime_ms: int = 500
    # Device names of local disks to copy with the memory (storage migration).
    copy_disks: list[str] = field(default_factory=list)
    # Shared disks on storage the hypervisor cannot prove is shared (lab folders).
    unsafe: bool = False
    # QEMU throttles the guest's vCPUs when pre-copy does not converge (it must be
    # armed before the migration starts; QEMU engages it only when needed).
    auto_converge: bool = False
    auto_converge_initial: int = 20
    auto_converge_increment: int = 10
    # Allow a switch to post-copy later (`start_postcopy`); it must be enabled at the start.
    postcopy: bool = False


# A job-statistics sample as the hypervisor reports it (libvirt's virDomainGetJobStats keys).
JobStats = dict[str, Any]


class Hypervisor(Protocol):
    """Every method raises HypervisorUnavailable when the hypervisor cannot be reached."""

    backend: str

    async def node_facts(self) -> NodeFacts: ...

    async def list_vms(self) -> VmInventory:
        """One domain that cannot be read never hides the others: it is reported unreadable."""
        ...

    async def network_facts(self) -> HostNetworks:
        """What this host offers VMs' interfaces: libvirt networks (with portgroups) and devices."""
        ...

    async def describe_vm(self, name: str, *, definition: bool = False) -> VmDescription:
        """Raises VmNotFound. `definition`: with its persistent domain XML and digest."""
        ...

    async def start_defined(self, xml: str, uuid: str) -> bool:
        """Define the domain from `xml` (checked by the caller) and start it, unless the
        domain of that UUID already runs here. True when this call started it. Raises
        StartRefused; a definition this call made is removed again when the start fails."""
        ...

    async def vm_state(self, name: str) -> VmState | None:
        """None when there is no domain of that name."""
        ...

    async def cpu_incompatibility(self, vm: VmDescription) -> str | None:
        """A sentence saying why this host cannot run the VM's CPU; None when it can."""
        ...

    async def storage_problem(self, disk: DiskInfo) -> str | None:
        """For a disk the VM keeps on shared storage: why this host cannot reach it, or None."""
        ...

    async def create_disk(self, disk: DiskInfo) -> bool:
        """An empty image like `disk` at the same path, for storage copy. False if it existed."""
        ...

    async def remove_disk(self, path: str) -> bool:
        """False when there was nothing to remove."""
        ...

    async def migrate(self, name: str, plan: MigrationPlan) -> None:
        """Runs the whole live migration; raises MigrationFailed."""
        ...

    async def measure_dirty_rate(self, name: str, seconds: float) -> int:
        """How fast the running guest dirties its memory, in bytes per second, measured
        over about `seconds` (0 < seconds <= 60; libvirt rounds up to whole seconds).
        Takes that long. Raises VmNotFound, MeasurementFailed when the guest is not
        running or the hypervisor cannot measure it (never a guessed number), and
        ValueError for `seconds` outside that range."""
        ...

    async def job_stats(self, name: str) -> JobStats | None:
        """The running job's statistics; None when no job runs. On a destination,
        libvirt keeps an incoming migration's statistics to the source: the job is
        then reported with `incoming` set and no figures."""
        ...

    async def completed_job_stats(self, name: str) -> JobStats:
        """Statistics of the last finished job (on the destination after an incoming migration)."""
        ...

    async def abort_job(self, name: str) -> bool: ...

    async def set_bandwidth(self, name: str, bandwidth_mib: int) -> None: ...

    async def set_max_downtime(self, name: str, downtime_ms: int) -> None:
        """The longest pause the running migration may end with. Raises LeverRefused."""
        ...

    async def start_postcopy(self, name: str) -> None:
        """Switch the running migration (started with `postcopy`) to post-copy.
        Raises LeverRefused (no job, or one started without `postcopy`)."""
        ...

    async def destroy_incoming(self, name: str) -> bool:
        """Removes a paused, not yet running incoming domain left by a failed migration.
        Never touches a running one. False when there was none."""
        ...

    async def remove_inactive(self, name: str) -> bool:
        """Undefines a domain of that name that is defined but not active (what
        UNDEFINE_SOURCE leaves behind when libvirt did not finish its side). Never
        touches an active one. False when there was nothing to remove."""
        ...

    async def adopt_incoming(self, vm: VmDescription) -> None:
        """Called when the destination confirms a finished migration. Nothing to do
        for a real hypervisor; the simulated one materialises the VM here."""
        ...

    async def retire_defined(self, uuid: str) -> str:
        """Remove the definition of the domain of that UUID (its autostart too) unless it
        runs: "retired", "running" (untouched) or "missing". Disks are never touched."""
        ...

    async def close(self) -> None: ...


def version_string(encoded: int) -> str:
    """libvirt encodes versions as major * 1,000,000 + minor * 1,000 + micro."""
    return f"{encoded // 1_000_000}.{encoded // 1000 % 1000}.{encoded % 1000}"


def definition_digest(xml: str) -> str:
    """The digest of a persistent definition that hosts' reports carry (VmInfo.definition)."""
    return hashlib.sha256(xml.encode()).hexdigest()[:32]
