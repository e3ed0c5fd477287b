"""A hypervisor made of data: for scale tests and fast checks, never for proving migration."""

import uuid

from agent.config import SimulatedHost
from agent.hypervisor.base import NodeFacts
from proto.host import VmInfo, VmState


class SimulatedHypervisor:
    backend = "simulated"

    def __init__(self, host_name: str, spec: SimulatedHost) -> None:
        self._spec = spec
        self._host_uuid = spec.host_uuid or str(uuid.uuid5(uuid.NAMESPACE_DNS, host_name))
        self._vms: dict[str, VmInfo] = {
            vm.name: VmInfo(
                name=vm.name,
                uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{host_name}/{vm.name}")),
                vcpus=vm.vcpus,
                memory_mib=vm.memory_mib,
                state=VmState.RUNNING,
            )
            for vm in spec.vms
        }

    def add_vm(self, vm: VmInfo) -> None:
        self._vms[vm.name] = vm

    def remove_vm(self, name: str) -> VmInfo | None:
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

    async def close(self) -> None:
        pass
