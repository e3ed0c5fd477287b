"""Building the heartbeat message from what the agent last observed. Pure."""

from dataclasses import dataclass, field

import msgspec

from ferry.agent.hypervisor import NodeFacts
from ferry.proto.host import (
    Capacity,
    HealthCheck,
    HealthState,
    HostStatus,
    UnreadableVm,
    Versions,
    VmInfo,
    VmState,
    report_digest,
)
from ferry.proto.network import HostNetworks
from ferry.runtime.version import VERSION

AGENT_VERSION = VERSION


@dataclass(frozen=True)
class Observation:
    facts: NodeFacts | None
    vms: list[VmInfo]
    checks: list[HealthCheck]
    unreadable: list[UnreadableVm] = field(default_factory=list)
    networks: HostNetworks | None = None


def build_status(
    *,
    host: str,
    seq: int,
    boot_id: str,
    sent_at: float,
    interval: float,
    backend: str,
    peer_uri: str,
    migration_address: str,
    observation: Observation,
    last_facts: NodeFacts | None,
    migrations_in_flight: int = 0,
    short_beats: bool = False,
) -> HostStatus:
    """`last_facts` fills the capacity when the hypervisor is unreachable right now,
    so a host does not look empty because of one failed read."""
    facts = observation.facts or last_facts
    running = [vm for vm in observation.vms if vm.state in (VmState.RUNNING, VmState.PAUSED)]
    capacity = Capacity(
        cpus=facts.cpus if facts else 0,
        memory_total_mib=facts.memory_total_mib if facts else 0,
        memory_free_mib=facts.memory_free_mib if facts else 0,
        vcpus_used=sum(vm.vcpus for vm in running),
        memory_used_mib=sum(vm.memory_mib for vm in running),
    )
    status = HostStatus(
        host=host,
        seq=seq,
        boot_id=boot_id,
        sent_at=sent_at,
        interval=interval,
        capacity=capacity,
        health=HealthState.worst([c.state for c in observation.checks]),
        checks=list(observation.checks),
        vms=list(observation.vms),
        versions=Versions(
            libvirt=facts.libvirt_version if facts else "",
            qemu=facts.qemu_version if facts else "",
            agent=AGENT_VERSION,
        ),
        host_uuid=facts.host_uuid if facts else "",
        cpu_model=facts.cpu_model if facts else "",
        arch=facts.arch if facts else "",
        backend=backend,
        peer_uri=peer_uri,
        migration_address=migration_address,
        migrations_in_flight=migrations_in_flight,
        unreadable_vms=list(observation.unreadable),
        networks=observation.networks,
        short_beats=short_beats,
    )
    return msgspec.structs.replace(status, digest=report_digest(status))
