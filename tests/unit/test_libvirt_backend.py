"""The libvirt backend against libvirt's own test driver (`test:///path/node.xml`):
real libvirt-python calls, no daemon. Names with dots, interfaces, networks with
portgroups, and a network-less driver."""

import asyncio
from pathlib import Path, PurePosixPath

import pytest

from ferry.agent.hypervisor import ImagesFolder
from ferry.agent.hypervisor.libvirt_backend import LibvirtHypervisor
from ferry.proto.network import Attachment, LibvirtNetwork

NODE = """
<node>
  <domain type='test'>
    <name>ubuntu22.04</name>
    <memory unit='MiB'>256</memory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
    <devices>
      <interface type='network'><source network='prod' portgroup='web'/></interface>
      <interface type='bridge'><source bridge='br0'/></interface>
    </devices>
  </domain>
  <domain type='test'>
    <name>db.prod.example.com</name>
    <memory unit='MiB'>512</memory>
    <vcpu>2</vcpu>
    <os><type>hvm</type></os>
  </domain>
  <network>
    <name>prod</name>
    <bridge name='virbr9'/>
    <portgroup name='web'/>
    <portgroup name='db'/>
  </network>
</node>
"""


@pytest.fixture
def hypervisor(tmp_path: Path):
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    hv = LibvirtHypervisor(f"test://{node}", ImagesFolder(tmp_path, PurePosixPath(tmp_path)))
    yield hv
    asyncio.run(hv.close())


def test_domains_with_any_name_are_listed_with_their_attachments(hypervisor):
    inventory = asyncio.run(hypervisor.list_vms())
    assert inventory.unreadable == []
    by_name = {vm.name: vm for vm in inventory.vms}
    assert set(by_name) == {"ubuntu22.04", "db.prod.example.com"}
    assert by_name["ubuntu22.04"].attachments == [Attachment("network", "prod", "web"), Attachment("bridge", "br0")]
    assert (by_name["db.prod.example.com"].memory_mib, by_name["db.prod.example.com"].vcpus) == (512, 2)


def test_a_described_vm_carries_its_attachments(hypervisor):
    vm = asyncio.run(hypervisor.describe_vm("ubuntu22.04"))
    assert vm.name == "ubuntu22.04" and vm.attachments[0] == Attachment("network", "prod", "web")


def test_the_hosts_networks_come_with_their_portgroups(hypervisor):
    facts = asyncio.run(hypervisor.network_facts())
    assert facts.networks == [LibvirtNetwork("prod", active=True, portgroups=["db", "web"])]
    assert all(not d.startswith("vnet") for d in facts.devices)
