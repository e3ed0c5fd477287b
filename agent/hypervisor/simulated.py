"""A hypervisor made of data: for scale tests and fast checks, never for proving migration.

A simulated migration moves the VM's memory at the configured speed (or the
bandwidth limit), reports libvirt-shaped job statistics, obeys abort and speed
changes, and removes the VM from the source at the end. The destination, which
runs in another process, materialises the VM when the coordinator commits.

A VM may dirty its memory at a set rate (`dirty_mib_per_s`): a migration then
copies again what was dirtied, never more than the VM's memory, and finishes
only when nothing is left; a VM dirtying as fast as the copy never finishes
(abort ends it). Iterations are counted as passes over what was left when each
began, as QEMU does.
"""

import asyncio
import re
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape

import msgspec

from ferry.agent.config import SimulatedHost
from ferry.agent.hypervisor.base import (
    JobStats,
    LeverRefused,
    MeasurementFailed,
    MigrationFailed,
    MigrationPlan,
    NodeFacts,
    StartRefused,
    VmInventory,
    VmNotFound,
    definition_digest,
)
from ferry.proto.agent import DiskInfo, VmDescription
from ferry.proto.host import VmInfo, VmState
from ferry.proto.network import Attachment, AttachmentKind, HostNetworks, LibvirtNetwork

STEP_SECONDS = 0.05
MIB = 1024 * 1024
PAGE_SIZE = 4096


@dataclass
class _Job:
    started: float
    total: int
    # Bytes still to copy: the VM's memory at first, then what was dirtied again.
    remaining: int
    # Bytes left in the current pass (iteration); the next pass copies what is left then.
    pass_left: int
    iteration: int = 1
    processed: int = 0
    bandwidth_mib: int = 0
    aborted: bool = False
    bps: int = 0
    dirty_bps: int = 0
    max_downtime_ms: int = 300
    # Started with post-copy allowed (as VIR_MIGRATE_POSTCOPY), and switched to it.
    postcopy_armed: bool = False
    postcopy: bool = False


class SimulatedHypervisor:
    backend = "simulated"

    def __init__(self, host_name: str, spec: SimulatedHost) -> None:
        self._spec = spec
        self._host_uuid = spec.host_uuid or str(uuid.uuid5(uuid.NAMESPACE_DNS, host_name))
        self._vms: dict[str, VmInfo] = {}
        self._cpu_models: dict[str, str] = {}
        self._dirty_mib: dict[str, int] = {}
        self._jobs: dict[str, _Job] = {}
        self._completed: dict[str, JobStats] = {}
        for vm in spec.vms:
            self.add_vm(
                VmInfo(
                    name=vm.name,
                    uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{host_name}/{vm.name}")),
                    vcpus=vm.vcpus,
                    memory_mib=vm.memory_mib,
                    state=VmState.RUNNING if vm.running else VmState.SHUTOFF,
                    attachments=[Attachment(AttachmentKind.NETWORK, network) for network in vm.networks],
                ),
                cpu_model=vm.cpu_model,
                dirty_mib_per_s=vm.dirty_mib_per_s,
            )

    def add_vm(self, vm: VmInfo, cpu_model: str = "", dirty_mib_per_s: int = 0) -> None:
        self._vms[vm.name] = msgspec.structs.replace(vm, definition=definition_digest(_domain_xml(vm)))
        if cpu_model:
            self._cpu_models[vm.name] = cpu_model
        self.set_dirty_rate(vm.name, dirty_mib_per_s)

    def remove_vm(self, name: str) -> VmInfo | None:
        self._cpu_models.pop(name, None)
        self._dirty_mib.pop(name, None)
        return self._vms.pop(name, None)

    def set_dirty_rate(self, name: str, dirty_mib_per_s: int) -> None:
        """How fast the VM dirties its memory from now on (a running migration sees it at its next step)."""
        if dirty_mib_per_s:
            self._dirty_mib[name] = dirty_mib_per_s
        else:
            self._dirty_mib.pop(name, None)

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

    async def list_vms(self) -> VmInventory:
        return VmInventory(sorted(self._vms.values(), key=lambda vm: vm.name))

    async def network_facts(self) -> HostNetworks:
        return HostNetworks(networks=[LibvirtNetwork(name) for name in self._spec.networks])

    def _vm(self, name: str) -> VmInfo:
        try:
            return self._vms[name]
        except KeyError:
            raise VmNotFound(name) from None

    async def describe_vm(self, name: str, *, definition: bool = False) -> VmDescription:
        vm = self._vm(name)
        xml = _domain_xml(vm) if definition else ""
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
            attachments=list(vm.attachments),
            domain_xml=xml,
            definition=definition_digest(xml) if xml else "",
        )

    async def retire_defined(self, uuid: str) -> str:
        held = next((vm for vm in self._vms.values() if vm.uuid == uuid), None)
        if held is None:
            return "missing"
        if held.state == VmState.RUNNING:
            return "running"
        self.remove_vm(held.name)
        return "retired"

    async def start_defined(self, xml: str, uuid: str) -> bool:
        held = next((vm for vm in self._vms.values() if vm.uuid == uuid), None)
        if held is not None and held.state == VmState.RUNNING:
            return False
        try:
            root = ET.fromstring(xml)
            name = root.findtext("name") or ""
            memory_mib = int(root.findtext("memory") or 0) // 1024
            vcpus = int(root.findtext("vcpu") or 1)
        except (ET.ParseError, ValueError) as exc:
            raise StartRefused(f"XML error: {exc}") from None
        if self._spec.refuse_starts:
            raise StartRefused(self._spec.refuse_starts)
        self.add_vm(VmInfo(name=name, uuid=uuid, vcpus=vcpus, memory_mib=memory_mib, state=VmState.RUNNING))
        return True

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

    async def measure_dirty_rate(self, name: str, seconds: float) -> int:
        if not 0 < seconds <= 60:
            raise ValueError(f"a dirty rate is measured over 0 to 60 s, not {seconds}")
        if self._vm(name).state != VmState.RUNNING:
            raise MeasurementFailed(f"{name} is not running: only a running guest's dirty rate can be measured")
        await asyncio.sleep(seconds)
        if name not in self._vms:
            raise VmNotFound(name)  # it left (migrated away) while being measured
        return self._dirty_mib.get(name, 0) * MIB

    async def migrate(self, name: str, plan: MigrationPlan) -> None:
        vm = self._vm(name)
        if name in self._jobs:
            raise MigrationFailed(f"{name} is already migrating")
        total = vm.memory_mib * MIB
        job = self._jobs[name] = _Job(
            started=time.monotonic(), total=total, remaining=total, pass_left=total, bandwidth_mib=plan.bandwidth_mib,
            max_downtime_ms=plan.max_downtime_ms, postcopy_armed=plan.postcopy,
        )
        try:
            while job.remaining > 0:
                await asyncio.sleep(STEP_SECONDS)
                if job.aborted:
                    raise MigrationFailed("operation aborted: migration out job: canceled by client")
                if plan.peer_uri and plan.peer_uri in self._spec.unreachable_peers:
                    raise MigrationFailed(f"unable to connect to {plan.peer_uri}: no route to host (simulated fault)")
                # In post-copy the guest runs on the destination: nothing is dirtied here any more.
                self._step(job, 0 if job.postcopy else self._dirty_mib.get(name, 0) * MIB)
            elapsed_ms = int((time.monotonic() - job.started) * 1000)
            self._completed[name] = {
                "time_elapsed": elapsed_ms,
                "downtime": 5,
                "data_processed": job.processed,
                "memory_iteration": job.iteration,
            }
            self.remove_vm(name)
        finally:
            del self._jobs[name]

    def _step(self, job: _Job, dirty_bps: int) -> None:
        """One step of copying; what the guest dirtied meanwhile is to be copied again,
        unless nothing was left (the last copy, with the guest paused)."""
        speed = min(job.bandwidth_mib or self._spec.migration_mib_per_s, self._spec.migration_mib_per_s)
        job.bps = speed * MIB
        job.dirty_bps = dirty_bps
        sent = min(job.remaining, int(job.bps * STEP_SECONDS))
        job.processed += sent
        job.remaining -= sent
        job.pass_left -= sent
        if job.remaining == 0:
            return
        job.remaining = min(job.total, job.remaining + int(dirty_bps * STEP_SECONDS))
        if job.pass_left <= 0:
            if job.remaining * 1000 <= job.bps * job.max_downtime_ms:
                # As QEMU at the end of a pass: what is left fits the allowed downtime,
                # so the guest pauses and the rest is copied.
                job.processed += job.remaining
                job.remaining = 0
                return
            job.iteration += 1
            job.pass_left = job.remaining

    async def job_stats(self, name: str) -> JobStats | None:
        job = self._jobs.get(name)
        if job is None:
            return None
        return {
            "time_elapsed": int((time.monotonic() - job.started) * 1000),
            "data_total": job.total,
            "data_processed": job.processed,
            "data_remaining": job.remaining,
            "memory_bps": job.bps,
            "memory_dirty_rate": job.dirty_bps // PAGE_SIZE,  # pages per second, as libvirt reports it
            "memory_page_size": PAGE_SIZE,
            "memory_iteration": job.iteration,
        }

    async def completed_job_stats(self, name: str) -> JobStats:
        return self._completed.get(name, {})

    async def abort_job(self, name: str) -> bool:
        job = self._jobs.get(name)
        if job is None:
            return False
        job.aborted = True
        return True

    async def set_max_downtime(self, name: str, downtime_ms: int) -> None:
        job = self._jobs.get(name)
        if job is not None:
            job.max_downtime_ms = downtime_ms

    async def start_postcopy(self, name: str) -> None:
        job = self._jobs.get(name)
        if job is None:
            raise LeverRefused(f"no migration of {name} runs")
        if not job.postcopy_armed:
            # As libvirt: post-copy must be allowed when the migration starts.
            raise LeverRefused(f"the migration of {name} was not started with post-copy enabled")
        # The guest runs on the destination now; what is left is fetched on demand.
        job.postcopy = True

    async def set_bandwidth(self, name: str, bandwidth_mib: int) -> None:
        job = self._jobs.get(name)
        if job is not None:
            job.bandwidth_mib = bandwidth_mib

    async def destroy_incoming(self, name: str) -> bool:
        return False  # a simulated destination holds nothing until commit

    async def remove_inactive(self, name: str) -> bool:
        vm = self._vms.get(name)
        if vm is None or vm.state != VmState.SHUTOFF:
            return False
        del self._vms[name]
        return True

    async def adopt_incoming(self, vm: VmDescription) -> None:
        if vm.name not in self._vms:
            self.add_vm(
                VmInfo(
                    name=vm.name, uuid=vm.uuid, vcpus=vm.vcpus, memory_mib=vm.memory_mib, attachments=list(vm.attachments)
                ),
                cpu_model=_cpu_model(vm.cpu_xml),
            )
            # As with libvirt, a finished incoming job leaves its statistics here.
            self._completed[vm.name] = {"downtime": 5, "data_processed": vm.memory_mib * MIB}

    async def close(self) -> None:
        pass


def _domain_xml(vm: VmInfo) -> str:
    """A definition as libvirt would write one, for the parts a restart reads."""
    return (
        f"<domain type='qemu'><name>{escape(vm.name)}</name><uuid>{vm.uuid}</uuid>"
        f"<memory unit='KiB'>{vm.memory_mib * 1024}</memory><vcpu>{vm.vcpus}</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os><devices/></domain>"
    )


def _cpu_model(cpu_xml: str) -> str:
    """The model named in a <cpu> element as describe_vm writes it; "" for none."""
    found = re.search(r"<model>([^<]*)</model>", cpu_xml)
    return found.group(1) if found else ""
