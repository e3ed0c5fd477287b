"""Would this host take an incoming VM? Pure: observations in, a decline or None out.

The checks that need the hypervisor (CPU comparison, storage reachability) are
done by the caller; their answers arrive here as sentences.
"""

from dataclasses import dataclass, field

from ferry.agent.hypervisor import NodeFacts
from ferry.proto.agent import DeclineCode, VmDescription
from ferry.proto.host import Versions, VmState, version_tuple


@dataclass(frozen=True)
class Refusal:
    code: str
    reason: str


@dataclass(frozen=True)
class IncomingFacts:
    host: str
    node: NodeFacts
    reserved_memory_mib: int
    existing_state: VmState | None
    cpu_problem: str | None
    storage_problems: list[str]
    memory_margin_mib: int
    # What the VM's interfaces need and this host lacks (proto.network.missing_attachments).
    network_problems: list[str] = field(default_factory=list)


def judge_incoming(vm: VmDescription, source: str, source_versions: Versions, facts: IncomingFacts) -> Refusal | None:
    host = facts.host
    if facts.existing_state is not None:
        return Refusal(DeclineCode.VM_EXISTS, f"{host} already has a domain named {vm.name} ({facts.existing_state})")
    if vm.arch and facts.node.arch and vm.arch != facts.node.arch:
        return Refusal(DeclineCode.ARCH_MISMATCH, f"{host} is {facts.node.arch}, {vm.name} needs {vm.arch}")
    for what, mine, theirs in (
        ("libvirt", facts.node.libvirt_version, source_versions.libvirt),
        ("QEMU", facts.node.qemu_version, source_versions.qemu),
    ):
        if theirs and version_tuple(mine) < version_tuple(theirs):
            return Refusal(DeclineCode.VERSION_OLDER, f"{host} runs {what} {mine}, older than {theirs} on {source} where {vm.name} runs")
    if facts.cpu_problem:
        return Refusal(DeclineCode.CPU_INCOMPATIBLE, f"{host} cannot run {vm.name}'s CPU: {facts.cpu_problem}")
    if facts.network_problems:
        return Refusal(
            DeclineCode.NETWORK_MISSING,
            f"{host} lacks what {vm.name}'s interfaces need: {'; '.join(facts.network_problems)}",
        )
    free = facts.node.memory_free_mib - facts.reserved_memory_mib
    need = vm.memory_mib + facts.memory_margin_mib
    if free < need:
        return Refusal(
            DeclineCode.NO_CAPACITY,
            f"{host} has {max(free, 0)} MiB of memory free after reservations; {vm.name} needs {need} MiB",
        )
    if facts.storage_problems:
        return Refusal(DeclineCode.STORAGE_UNREACHABLE, f"{host} cannot reach {vm.name}'s disks: {'; '.join(facts.storage_problems)}")
    return None
