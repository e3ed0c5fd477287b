"""Same network on both sides: what a VM's interfaces need, what a host offers,
and the three places that judge it (placement, the destination, the XML reader)."""

import dataclasses
import xml.etree.ElementTree as ET

import pytest

from ferry.agent.hypervisor.networks import attachments_of, host_devices, network_portgroups, read_devices
from ferry.agent.incoming import judge_incoming
from ferry.coordinator.placement import HostFacts, PlacementRules, VmDemand, rank, reject_reason
from ferry.proto.host import HealthState
from ferry.proto.network import Attachment, HostNetworks, LibvirtNetwork, missing_attachments
from tests.unit.test_incoming import FACTS, SOURCE_VERSIONS, VM

PROD = Attachment("network", "prod")
OFFERS = HostNetworks(
    networks=[
        LibvirtNetwork("default"),
        LibvirtNetwork("prod", portgroups=["web", "db"]),
        LibvirtNetwork("spare", active=False),
    ],
    devices=["br0", "eth0", "eth1.100"],
)


@pytest.mark.parametrize(
    "need, problem",
    [
        (PROD, None),
        (Attachment("network", "prod", "web"), None),
        (Attachment("network", "prod", "ops"), "libvirt network prod has no portgroup ops"),
        (Attachment("network", "dmz"), "no libvirt network dmz"),
        (Attachment("network", "spare"), "libvirt network spare is defined but not active"),
        (Attachment("bridge", "br0"), None),
        (Attachment("bridge", "br9"), "no bridge br9"),
        (Attachment("direct", "eth1.100"), None),
        (Attachment("direct", "eth7"), "no network device eth7 (for a direct attachment)"),
        (Attachment("vhostuser", "/run/sock"), None),  # a kind this code does not judge
    ],
)
def test_each_need_against_what_the_host_offers(need, problem):
    assert missing_attachments([need], OFFERS) == ([problem] if problem else [])


def test_every_missing_thing_is_named_once():
    needs = [Attachment("network", "dmz"), Attachment("network", "dmz"), Attachment("bridge", "br9"), PROD]
    assert missing_attachments(needs, OFFERS) == ["no libvirt network dmz", "no bridge br9"]


VM_DEMAND = VmDemand(
    name="web-1", source="hv1", vcpus=1, memory_mib=256, libvirt_version="9.0.0", qemu_version="7.2.0",
    attachments=(PROD,),
)


def host(name: str, networks: HostNetworks | None) -> HostFacts:
    return HostFacts(
        name=name, up=True, health=HealthState.OK, cpus=4, vcpus_used=0, memory_total_mib=8192,
        memory_free_mib=8000, memory_used_mib=0, libvirt_version="9.0.0", qemu_version="7.2.0", networks=networks,
    )


def test_placement_skips_a_host_without_the_vms_network():
    rejection = reject_reason(VM_DEMAND, host("hv2", HostNetworks(networks=[LibvirtNetwork("default")])), PlacementRules())
    assert rejection is not None and rejection.code == "network_missing"
    assert rejection.reason == "hv2 lacks what web-1's interfaces need: no libvirt network prod"


def test_placement_picks_the_host_that_has_it_even_with_less_room():
    roomy = dataclasses.replace(host("hv2", HostNetworks()), memory_free_mib=8000)
    tight = dataclasses.replace(host("hv3", HostNetworks(networks=[LibvirtNetwork("prod")])), memory_free_mib=2000)
    ranking = rank(VM_DEMAND, [roomy, tight])
    assert ranking.best == "hv3" and [r.code for r in ranking.rejections] == ["network_missing"]


def test_a_host_whose_agent_does_not_report_networks_is_left_to_its_prepare():
    assert reject_reason(VM_DEMAND, host("hv2", None), PlacementRules()) is None


def test_the_destination_declines_network_missing_naming_the_network():
    refusal = judge_incoming(VM, "hv1", SOURCE_VERSIONS, dataclasses.replace(FACTS, network_problems=["no libvirt network prod"]))
    assert refusal is not None and refusal.code == "network_missing"
    assert refusal.reason == "hv2 lacks what g1's interfaces need: no libvirt network prod"


DOMAIN = """
<domain type='kvm'>
  <name>web-1</name>
  <devices>
    <interface type='network'><source network='prod' portgroup='web'/><model type='virtio'/></interface>
    <interface type='network'><source network='default' bridge='virbr0'/></interface>
    <interface type='bridge'><source bridge='br0'/><virtualport type='openvswitch'/></interface>
    <interface type='direct'><source dev='eth1' mode='bridge'/></interface>
    <interface type='user'><model type='virtio'/></interface>
    <interface type='ethernet'><target dev='tap7'/></interface>
    <interface type='network'/>
  </devices>
</domain>
"""


def test_interfaces_read_from_domain_xml():
    assert attachments_of(ET.fromstring(DOMAIN)) == [
        Attachment("network", "prod", "web"),
        Attachment("network", "default"),
        Attachment("bridge", "br0"),
        Attachment("direct", "eth1"),
    ]


def test_portgroups_read_from_network_xml():
    xml = "<network><name>prod</name><portgroup name='web' default='yes'/><portgroup name='db'/></network>"
    assert network_portgroups(xml) == ["db", "web"]


def test_host_devices_leave_out_loopback_and_guest_taps(tmp_path):
    assert host_devices(["lo", "eth0", "vnet12", "macvtap3", "br0", "virbr0"]) == ["br0", "eth0", "virbr0"]
    for name in ("eth0", "vnet0"):
        (tmp_path / name).mkdir()
    assert read_devices(tmp_path) == ["eth0"]
    assert read_devices(tmp_path / "missing") == []
