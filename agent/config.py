"""agent.toml: what one agent needs to know about its host."""

import importlib.util
import os
from typing import Annotated, Literal

import msgspec

from ferry.agent.peer_rules import DEFAULT_PEER_SCHEMES, peer_uri_problem
from ferry.proto.names import HostName, VmName
from ferry.runtime.config import NatsSettings, file_problem, nats_problems
from ferry.runtime.metrics import address_problem

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
# A URI scheme as libvirt spells them: qemu+tls, qemu+ssh, qemu+tcp.
PeerScheme = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9+.-]{0,31}\Z")]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]


class SimulatedVm(msgspec.Struct, frozen=True):
    name: VmName
    vcpus: Annotated[int, msgspec.Meta(ge=1)] = 1
    memory_mib: Annotated[int, msgspec.Meta(ge=1)] = 256
    # A CPU model the VM needs; a simulated host with another model declines it.
    cpu_model: str = ""
    # How fast the guest dirties its memory: what measure_dirty_rate reports, and what
    # a migration must copy again; at or above the migration speed it never converges.
    dirty_mib_per_s: Annotated[int, msgspec.Meta(ge=0)] = 0
    # libvirt networks its interfaces use: a host that defines none of them declines it.
    networks: list[str] = []
    # Defined but shut off (as a host's guests are after a power cut).
    running: bool = True


class SimulatedHost(msgspec.Struct, frozen=True):
    cpus: Annotated[int, msgspec.Meta(ge=1)] = 16
    memory_mib: Annotated[int, msgspec.Meta(ge=1)] = 65536
    # Memory the host keeps for itself, never offered to VMs.
    reserved_mib: Annotated[int, msgspec.Meta(ge=0)] = 1024
    cpu_model: str = "Simulated-CPU"
    arch: str = "x86_64"
    libvirt_version: str = "9.0.0"
    qemu_version: str = "7.2.0"
    host_uuid: str = ""
    vms: list[SimulatedVm] = []
    # How fast a simulated migration moves memory when no bandwidth limit is set.
    migration_mib_per_s: Annotated[int, msgspec.Meta(ge=1)] = 4096
    # Peer URIs this host cannot reach: migrations towards them fail part-way,
    # as with a network fault (tests of retries on another destination).
    unreachable_peers: list[str] = []
    # libvirt networks this host defines (all active), for VMs' interfaces.
    networks: list[str] = []
    # Non-empty: every start of a restarted VM is refused with these words (as a disk lock would).
    refuse_starts: str = ""


class HypervisorSettings(msgspec.Struct, frozen=True):
    backend: Literal["libvirt", "simulated"] = "libvirt"
    uri: str = "qemu:///system"
    # How other hosts' libvirtd reach this one for peer-to-peer migration.
    peer_uri: str = ""
    # Where QEMU on this host listens for incoming migration streams.
    migration_address: str = ""
    simulated: SimulatedHost = SimulatedHost()


class HealthSettings(msgspec.Struct, frozen=True):
    interval: PositiveSeconds = 5.0
    # Free host memory below these shares of the total turns the check WARNING / CRITICAL.
    memory_warning_percent: Percent = 10.0
    memory_critical_percent: Percent = 3.0
    # Free space on the images folder below these shares turns the check WARNING / CRITICAL.
    disk_warning_percent: Percent = 10.0
    disk_critical_percent: Percent = 3.0
    # Executables run every interval by the Nagios plugin convention (exit 0 OK, 1 WARNING,
    # 2 CRITICAL); operators add host-specific checks without changing the agent.
    # A missing folder means no probes.
    probe_dir: str = "/etc/ferry/probes.d"
    # Each probe is killed (with its process group) after this long and reported
    # WARNING: a hung probe must neither stall the health loop nor evacuate the host.
    probe_timeout: PositiveSeconds = 10.0


class MigrationSettings(msgspec.Struct, frozen=True):
    # How long a destination holds a reservation for a migration that has not started.
    lease_seconds: PositiveSeconds = 30.0
    # Memory a destination keeps free beyond the incoming VM's size (QEMU overhead).
    memory_margin_mib: Annotated[int, msgspec.Meta(ge=0)] = 128
    # How often the source samples the job's statistics and publishes progress.
    progress_interval: PositiveSeconds = 0.5
    # Let libvirt migrate disks on storage it cannot prove is shared (for example a
    # local folder both lab hosts see). Never needed with real shared storage.
    allow_unsafe: bool = False
    # How often each running guest's dirty rate is measured in the background, so a
    # session can predict convergence without waiting; 0 turns it off.
    dirty_rate_interval: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # How long one measurement watches the guest (libvirt's dirty-rate calculation).
    dirty_rate_seconds: Annotated[float, msgspec.Meta(ge=1, le=60)] = 1.0
    # Guest memory holds keys and passwords: a migrate request without TLS for the
    # QEMU stream is refused (`tls_required`) unless this is false (a trusted network).
    require_tls: bool = True
    # libvirt URI schemes this host's libvirtd dials to send a VM away. qemu+tls
    # authenticates both ends by certificate; qemu+tcp is usually neither encrypted
    # nor authenticated, qemu+ssh trusts ssh keys instead: add those only on purpose.
    allowed_peer_schemes: list[PeerScheme] = msgspec.field(default_factory=lambda: list(DEFAULT_PEER_SCHEMES))


class AgentConfig(msgspec.Struct, frozen=True):
    host: HostName
    heartbeat_interval: PositiveSeconds = 2.0
    images_dir: str = "/var/lib/libvirt/images"
    # The same folder as the hypervisor (and domain XML) names it, when that differs
    # from what the agent sees (the lab's per-host mount namespaces). Default: images_dir.
    images_dir_in_domain: str = ""
    log_level: str = "info"
    # Where the agent journals its sessions (agent/journal.py), created owner-only at
    # start. A restarted agent reads it to follow a migration libvirt kept running
    # without it, and to know which reservations and images are its own.
    state_dir: str = "/var/lib/ferry/agent"
    # Where /metrics (Prometheus) listens, "HOST:PORT"; "" turns it off. Loopback by
    # default: the operator opens it to Prometheus deliberately (it names VMs). Not the
    # coordinator's 9464, so both run on one machine without a config.
    metrics_address: str = "127.0.0.1:9465"
    nats: NatsSettings = NatsSettings()
    hypervisor: HypervisorSettings = HypervisorSettings()
    health: HealthSettings = HealthSettings()
    migration: MigrationSettings = MigrationSettings()


def problems(config: AgentConfig) -> list[str]:
    """What keeps this config from working beyond its keys and values: files and
    folders it names that are not there, and settings that contradict each other."""
    found = nats_problems(config.nats)
    if (problem := address_problem("metrics_address", config.metrics_address)) is not None:
        found.append(problem)
    images = file_problem("images_dir", config.images_dir, folder=True)
    if images is not None:
        found.append(images)
    # A missing state folder is created at start; a file in its place is a mistake.
    if os.path.exists(config.state_dir) and not os.path.isdir(config.state_dir):
        found.append(f"state_dir: {config.state_dir} is not a folder")
    health = config.health
    # A missing probe folder means no probes (documented); a file in its place is a mistake.
    if os.path.exists(health.probe_dir) and not os.path.isdir(health.probe_dir):
        found.append(f"health.probe_dir: {health.probe_dir} is not a folder")
    for what in ("memory", "disk"):
        warning, critical = getattr(health, f"{what}_warning_percent"), getattr(health, f"{what}_critical_percent")
        if critical > warning:
            found.append(f"health.{what}_critical_percent ({critical:g}) is above health.{what}_warning_percent ({warning:g})")
    found += _peer_problems(config)
    if config.hypervisor.backend == "libvirt":
        if importlib.util.find_spec("libvirt") is None:
            found.append("hypervisor.backend is libvirt, but libvirt-python is not installed: pip install 'ferry[agent]'")
        if not config.hypervisor.peer_uri:
            found.append("hypervisor.peer_uri is empty: other hosts' libvirtd could not reach this one to migrate VMs here")
    return found


def _peer_problems(config: AgentConfig) -> list[str]:
    """The peer URI this host announces must be one that sources dial: with the
    same rules on every host, one this host would refuse, the others refuse too."""
    allowed = config.migration.allowed_peer_schemes
    if not allowed:
        return ["migration.allowed_peer_schemes is empty: this host could send no VM away (qemu+tls is the safe one)"]
    uri = config.hypervisor.peer_uri
    problem = peer_uri_problem(uri, allowed) if uri else None
    return [f"hypervisor.peer_uri {uri} would be refused by sources with these settings: {problem}"] if problem else []
