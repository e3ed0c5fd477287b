import pytest

from ferry.agent.config import AgentConfig, HealthSettings, SimulatedHost, SimulatedVm
from ferry.agent.health import DiskSpace, judge_disk, judge_share, probe_host
from ferry.agent.hypervisor import HypervisorUnavailable, NodeFacts
from ferry.agent.hypervisor.base import version_string
from ferry.agent.hypervisor.simulated import SimulatedHypervisor
from ferry.agent.status import Observation, build_status
from ferry.proto.host import HealthCheck, HealthState, VmInfo, VmState
from ferry.runtime.config import load_toml

SETTINGS = HealthSettings(memory_warning_percent=10, memory_critical_percent=3)


@pytest.mark.parametrize(
    "free, total, state",
    [(50, 100, HealthState.OK), (10, 100, HealthState.OK), (9.9, 100, HealthState.WARNING),
     (3, 100, HealthState.WARNING), (2.9, 100, HealthState.CRITICAL), (0, 100, HealthState.CRITICAL),
     (5, 0, HealthState.CRITICAL)],
)
def test_judge_share_thresholds(free, total, state):
    assert judge_share("memory", "mem", free, total, 10, 3).state == state


def test_missing_images_folder_is_a_warning_that_names_it():
    check = judge_disk("/nope", None, SETTINGS)
    assert check.state == HealthState.WARNING and "/nope" in check.message


def test_disk_check_reports_percent():
    check = judge_disk("/img", DiskSpace(total_bytes=1000, free_bytes=20), SETTINGS)
    assert check.state == HealthState.CRITICAL and "2.0% free" in check.message


@pytest.mark.parametrize("encoded, text", [(9000000, "9.0.0"), (7002022, "7.2.22"), (10010001, "10.10.1")])
def test_version_string(encoded, text):
    assert version_string(encoded) == text


class DownHypervisor:
    backend = "libvirt"

    async def node_facts(self):
        raise HypervisorUnavailable("cannot connect to libvirt at qemu:///system: socket missing")

    async def list_vms(self):
        raise HypervisorUnavailable("down")

    async def close(self):
        pass


async def test_unreachable_hypervisor_is_critical(tmp_path):
    probe = await probe_host(DownHypervisor(), str(tmp_path), SETTINGS)
    assert probe.facts is None
    assert probe.state == HealthState.CRITICAL
    assert probe.checks[0] == HealthCheck(
        "hypervisor", HealthState.CRITICAL, "cannot connect to libvirt at qemu:///system: socket missing"
    )


async def test_simulated_host_memory_accounts_for_vms(tmp_path):
    hv = SimulatedHypervisor(
        "hv1", SimulatedHost(cpus=4, memory_mib=4096, reserved_mib=1024, vms=[SimulatedVm("a", 2, 1024)])
    )
    facts = await hv.node_facts()
    assert (facts.cpus, facts.memory_total_mib, facts.memory_free_mib) == (4, 4096, 2048)
    probe = await probe_host(hv, str(tmp_path), SETTINGS)
    assert probe.state == HealthState.OK


FACTS = NodeFacts("u", "Skylake", "x86_64", 8, 16384, 8000, "9.0.0", "7.2.0")


def make_status(observation, last=None):
    return build_status(
        host="hv1", seq=1, boot_id="b", sent_at=0.0, interval=2.0, backend="libvirt",
        peer_uri="qemu+tls://127.0.10.1/system", migration_address="127.0.10.1",
        observation=observation, last_facts=last,
    )


def test_status_sums_only_running_and_paused_vms():
    vms = [
        VmInfo(name="a", vcpus=2, memory_mib=512, state=VmState.RUNNING),
        VmInfo(name="b", vcpus=1, memory_mib=256, state=VmState.PAUSED),
        VmInfo(name="c", vcpus=4, memory_mib=4096, state=VmState.SHUTOFF),
    ]
    s = make_status(Observation(FACTS, vms, [HealthCheck("x", HealthState.WARNING)]))
    assert (s.capacity.vcpus_used, s.capacity.memory_used_mib) == (3, 768)
    assert s.health == HealthState.WARNING
    assert (s.versions.libvirt, s.versions.qemu, s.cpu_model) == ("9.0.0", "7.2.0", "Skylake")


def test_status_keeps_last_known_capacity_when_hypervisor_is_down():
    s = make_status(Observation(None, [], [HealthCheck("hypervisor", HealthState.CRITICAL)]), last=FACTS)
    assert s.capacity.cpus == 8 and s.health == HealthState.CRITICAL


def test_minimal_config_gets_sane_defaults(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text('host = "hv1"\n')
    config = load_toml(f, AgentConfig)
    assert config.heartbeat_interval == 2.0
    assert config.hypervisor.backend == "libvirt" and config.hypervisor.uri == "qemu:///system"
    assert config.nats.servers == ["nats://127.0.0.1:4222"]


def test_status_carries_unreadable_domains_and_the_hosts_networks():
    from ferry.proto.host import UnreadableVm
    from ferry.proto.network import HostNetworks, LibvirtNetwork

    networks = HostNetworks(networks=[LibvirtNetwork("prod")], devices=["br0"])
    odd = UnreadableVm(name="odd", reason="internal error: boom")
    s = make_status(Observation(FACTS, [VmInfo(name="a.b")], [], unreadable=[odd], networks=networks))
    assert s.unreadable_vms == [odd] and s.networks == networks and [vm.name for vm in s.vms] == ["a.b"]
    assert s.content_key() != make_status(Observation(FACTS, [VmInfo(name="a.b")], [])).content_key()
