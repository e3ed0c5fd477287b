"""A hypervisor made of data: for scale tests and fast checks, never for proving migration.

A simulated migration moves the VM's memory at the configured speed (or the
bandwidth limit), reports libvirt-shaped job statistics, obeys abort and speed
changes, and removes the VM from the source at the end. The destination, which
runs in another process, materialises the VM when the coordinator commits.
"""

import asyncio
import re
import time
import uuid
from dataclasses import dataclass

from agent.config import SimulatedHost
from agent.hypervisor.base import (
    JobStats,
    MigrationFailed,
    MigrationPlan,
    NodeFacts,
    VmNotFound,
)
from proto.agent import DiskInfo, VmDescription
from proto.host import VmInfo, VmState

STEP_SECONDS = 0.05
MIB = 1024 * 1024


@dataclass
class _Job:
    started: float
    total: int
    processed: int = 0
    bandwidth_mib: int = 0
    aborted: bool = False
    bps: int = 0


class SimulatedHypervisor:
    backend = "simulated"

    def __init__(self, host_name: str, spec: SimulatedHost) -> None:
        self._spec = spec
        self._host_uuid = spec.host_uuid or str(uuid.uuid5(uuid.NAMESPACE_DNS, host_name))
        self._vms: dict[str, VmInfo] = {}
        self._cpu_models: dict[str, str] = {}
        self._jobs: dict[str, _Job] = {}
        self._completed: dict[str, JobStats] = {}
        for vm in spec.vms:
            self.add_vm(
                VmInfo(
                    name=vm.name,
                    uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{host_name}/{vm.name}")),
                    vcpus=vm.vcpus,
                    memory_mib=vm.memory_mib,
                    state=VmState.RUNNING,
                ),
                cpu_model=vm.cpu_model,
            )

    def add_vm(self, vm: VmInfo, cpu_model: str = "") -> None:
        self._vms[vm.name] = vm
        if cpu_model:
            self._cpu_models[vm.name] = cpu_model

    def remove_vm(self, name: str) -> VmInfo | None:
        self._cpu_models.pop(name, None)
        return self._vms.pop(name, None)

    async def node_facts(self) -> NodeFacts:
        used = sum(vm.memory_mib for vm in self._vms.values())
        return NodeFacts(
            host_uuid=self._host_uuid,
            cpu_model=self._spec.cpu_model,
            arch=self._spec.arch,
            cpus=self._spec.cpus,
            memory_total_mib=self._spec.memory_mib,
            memory_free_mib=max(0, self._spec.memory_mib - self._spec.reserved_mib - used),
            libvirt_version=self._spec.libvirt_version,
            qemu_version=self._spec.qemu_version,
        )

    async def list_vms(self) -> list[VmInfo]:
        return sorted(self._vms.values(), key=lambda vm: vm.name)

    def _vm(self, name: str) -> VmInfo:
        try:
            return self._vms[name]
        except KeyError:
            raise VmNotFound(name) from None

    async def describe_vm(self, name: str) -> VmDescription:
        vm = self._vm(name)
        model = self._cpu_models.get(name, "")
        return VmDescription(
            name=vm.name,
            uuid=vm.uuid,
            vcpus=vm.vcpus,
            memory_mib=vm.memory_mib,
            arch=self._spec.arch,
            virt_type="simulated",
            cpu_xml=f"<cpu><model>{model}</model></cpu>" if model else "",
            running=vm.state == VmState.RUNNING,
        )

    async def vm_state(self, name: str) -> VmState | None:
        vm = self._vms.get(name)
        return vm.state if vm else None

    async def cpu_incompatibility(self, vm: VmDescription) -> str | None:
        needed = _cpu_model(vm.cpu_xml)
        if needed and needed != self._spec.cpu_model:
            return f"this host has CPU model {self._spec.cpu_model}, the guest needs {needed}"
        return None

    async def storage_problem(self, disk: DiskInfo) -> str | None:
        return None

    async def create_disk(self, disk: DiskInfo) -> bool:
        return True

    async def remove_disk(self, path: str) -> bool:
        return True

    async def migrate(self, name: str, plan: MigrationPlan) -> None:
        vm = self._vm(name)
        if name in self._jobs:
            raise MigrationFailed(f"{name} is already migrating")
        job = self._jobs[name] = _Job(started=time.monotonic(), total=vm.memory_mib * MIB, bandwidth_mib=plan.bandwidth_mib)
        try:
            while job.processed < job.total:
                await asyncio.sleep(STEP_SECONDS)
                if job.aborted:
                    raise MigrationFailed("operation aborted: migration out job: canceled by client")
                speed = min(job.bandwidth_mib or self._spec.migration_mib_per_s, self._spec.migration_mib_per_s)
                job.bps = speed * MIB
                job.processed = min(job.total, job.processed + int(job.bps * STEP_SECONDS))
            elapsed_ms = int((time.monotonic() - job.started) * 1000)
            self._completed[name] = {"time_elapsed": elapsed_ms, "downtime": 5, "data_processed": job.total}
            self.remove_vm(name)
        finally:
            del self._jobs[name]

    async def job_stats(self, name: str) -> JobStats | None:
        job = self._jobs.get(name)
        if job is None:
            return None
        return {
            "time_elapsed": int((time.monotonic() - job.started) * 1000),
            "data_total": job.total,
            "data_processed": job.processed,
            "data_remaining": job.total - job.processed,
            "memory_bps": job.bps,
            "memory_iteration": 1,
        }

    async def completed_job_stats(self, name: str) -> JobStats:
        return self._completed.get(name, {})

    async def abort_job(self, name: str) -> bool:
        job = self._jobs.get(name)
        if job is None:
            return False
        job.aborted = True
        return True

    async def set_bandwidth(self, name: str, bandwidth_mib: int) -> None:
        job = self._jobs.get(name)
        if job is not None:
            job.bandwidth_mib = bandwidth_mib

    async def destroy_incoming(self, name: str) -> bool:
        return False  # a simulated destination holds nothing until commit

    async def adopt_incoming(self, vm: VmDescription) -> None:
        if vm.name not in self._vms:
            self.add_vm(
                VmInfo(name=vm.name, uuid=vm.uuid, vcpus=vm.vcpus, memory_mib=vm.memory_mib),
                cpu_model=_cpu_model(vm.cpu_xml),
            )
            # As with libvirt, a finished incoming job leaves its statistics here.
            self._completed[vm.name] = {"downtime": 5, "data_processed": vm.memory_mib * MIB}

    async def close(self) -> None:
        pass


def _cpu_model(cpu_xml: str) -> str:
    """The model named in a <cpu> element as describe_vm writes it; "" for none."""
    found = re.search(r"<model>([^<]*)</model>", cpu_xml)
    return found.group(1) if found else ""
