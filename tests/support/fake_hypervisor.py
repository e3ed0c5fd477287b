"""An in-memory hypervisor for unit tests of the agent's halves: the test sets
what libvirt would show (domains, running jobs, images) and reads what the
agent asked of it. Nothing moves by itself: a test ends a job with `end_job`."""

from dataclasses import dataclass, field

from ferry.agent.hypervisor import (
    HypervisorUnavailable,
    JobStats,
    MigrationFailed,
    MigrationPlan,
    NodeFacts,
    VmInventory,
    VmNotFound,
)
from ferry.proto.agent import DiskInfo, VmDescription
from ferry.proto.host import VmInfo, VmState
from ferry.proto.network import HostNetworks

GIB = 1 << 30


def job_sample(total: int = GIB, processed: int = 0, iteration: int = 1, elapsed_ms: int = 1000) -> JobStats:
    """libvirt-shaped statistics of a running migration job."""
    return {
        "time_elapsed": elapsed_ms,
        "data_total": total,
        "data_processed": processed,
        "data_remaining": total - processed,
        "memory_bps": 100 << 20,
        "memory_iteration": iteration,
    }


@dataclass
class FakeHypervisor:
    backend: str = "fake"
    # Domain name -> state; absent: no domain of that name.
    vms: dict[str, VmState] = field(default_factory=dict)
    disks: dict[str, list[DiskInfo]] = field(default_factory=dict)
    # Domain name -> statistics of the job libvirt runs on it now.
    jobs: dict[str, JobStats] = field(default_factory=dict)
    # Image paths that exist on this host.
    images: set[str] = field(default_factory=set)
    unavailable: bool = False
    # What the agent asked for, in order.
    migrated: list[tuple[str, MigrationPlan]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    undefined: list[str] = field(default_factory=list)
    bandwidths: list[tuple[str, int]] = field(default_factory=list)

    def end_job(self, name: str, *, moved: bool) -> None:
        """libvirt finished the job: with UNDEFINE_SOURCE a moved VM is gone from here."""
        self.jobs.pop(name, None)
        if moved:
            self.vms.pop(name, None)

    def _up(self) -> None:
        if self.unavailable:
            raise HypervisorUnavailable("cannot connect to libvirt: socket missing (fake)")

    async def node_facts(self) -> NodeFacts:
        self._up()
        return NodeFacts("uuid", "Fake-CPU", "x86_64", 16, 65536, 60000, "9.0.0", "7.2.0")

    async def list_vms(self) -> VmInventory:
        self._up()
        return VmInventory([VmInfo(name=name, state=state) for name, state in sorted(self.vms.items())])

    async def network_facts(self) -> HostNetworks:
        self._up()
        return HostNetworks()

    async def describe_vm(self, name: str, *, definition: bool = False) -> VmDescription:
        self._up()
        if name not in self.vms:
            raise VmNotFound(name)
        return VmDescription(
            name=name, uuid=f"uuid-{name}", vcpus=1, memory_mib=512, arch="x86_64",
            running=self.vms[name] == VmState.RUNNING, disks=list(self.disks.get(name, [])),
        )

    async def vm_state(self, name: str) -> VmState | None:
        self._up()
        return self.vms.get(name)

    async def start_defined(self, xml: str, uuid: str) -> bool:
        self._up()
        return False

    async def retire_defined(self, uuid: str) -> str:
        self._up()
        return "missing"

    async def cpu_incompatibility(self, vm: VmDescription) -> str | None:
        return None

    async def storage_problem(self, disk: DiskInfo) -> str | None:
        return None

    async def create_disk(self, disk: DiskInfo) -> bool:
        self._up()
        if disk.path in self.images:
            return False
        self.images.add(disk.path)
        return True

    async def remove_disk(self, path: str) -> bool:
        if path not in self.images:
            return False
        self.images.discard(path)
        self.removed.append(path)
        return True

    async def migrate(self, name: str, plan: MigrationPlan) -> None:
        self._up()
        self.migrated.append((name, plan))
        raise MigrationFailed("the fake hypervisor does not migrate")

    async def measure_dirty_rate(self, name: str, seconds: float) -> int:
        return 0

    async def job_stats(self, name: str) -> JobStats | None:
        self._up()
        return self.jobs.get(name)

    async def completed_job_stats(self, name: str) -> JobStats:
        return {}

    async def abort_job(self, name: str) -> bool:
        self._up()
        self.aborted.append(name)
        return name in self.jobs

    async def set_bandwidth(self, name: str, bandwidth_mib: int) -> None:
        self.bandwidths.append((name, bandwidth_mib))

    async def set_max_downtime(self, name: str, downtime_ms: int) -> None:
        pass

    async def start_postcopy(self, name: str) -> None:
        pass

    async def destroy_incoming(self, name: str) -> bool:
        self._up()
        if self.vms.get(name) != VmState.PAUSED:
            return False
        del self.vms[name]
        self.destroyed.append(name)
        return True

    async def remove_inactive(self, name: str) -> bool:
        self._up()
        if self.vms.get(name) != VmState.SHUTOFF:
            return False
        del self.vms[name]
        self.undefined.append(name)
        return True

    async def adopt_incoming(self, vm: VmDescription) -> None:
        pass

    async def close(self) -> None:
        pass
