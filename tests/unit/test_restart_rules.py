"""What an agent starts from a kept definition (agent/restart_rules.py), and what it refuses."""

from pathlib import Path, PurePosixPath

import pytest

from ferry.agent.hypervisor.disks import ImagesFolder
from ferry.agent.restart_rules import RestartRefused, disk_paths, restart_xml
from ferry.agent.restarts import lock_refusal

UUID = "5f0c6d2e-3b7a-4c1e-9d2f-0a1b2c3d4e5f"
IMAGES = ImagesFolder(host_dir=Path("/var/lib/ferry/images"), domain_dir=PurePosixPath("/var/lib/ferry/images"))


def domain(devices: str = "", *, name: str = "web 1", uuid: str = UUID, extra: str = "", os_part: str = "") -> str:
    return (
        f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid><memory unit='KiB'>262144</memory>"
        f"<os><type arch='x86_64'>hvm</type>{os_part}</os>{extra}"
        f"<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{devices}</devices></domain>"
    )


SHARED_DISK = "<disk type='file' device='disk'><source file='/srv/nfs/web.qcow2'/><target dev='vda'/></disk>"


def test_a_plain_definition_is_started_with_this_hosts_own_emulator():
    xml = restart_xml(domain(SHARED_DISK), "web 1", UUID.upper(), IMAGES)
    assert "<emulator>" not in xml and "/srv/nfs/web.qcow2" in xml and "<name>web 1</name>" in xml
    assert disk_paths(xml) == ["/srv/nfs/web.qcow2"]


def test_metadata_of_other_programs_is_kept():
    meta = "<metadata><nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'/></metadata>"
    assert "instance" in restart_xml(domain(extra=meta), "web 1", UUID, IMAGES)


@pytest.mark.parametrize(
    ("xml", "says"),
    [
        (domain(name="other"), "names the domain 'other', not 'web 1'"),
        (domain(uuid="00000000-0000-0000-0000-000000000000"), "UUID is"),
        ("<network><name>web 1</name></network>", "is a <network>, not a <domain>"),
        ("<domain", "does not parse"),
        ('<!DOCTYPE d [<!ENTITY a "aaaa">]><domain/>', "DOCTYPE or entities"),
        (
            domain(extra="<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
                   "<qemu:arg value='-blah'/></qemu:commandline>"),
            "outside <metadata>: QEMU pass-through",
        ),
        (domain("<hostdev mode='subsystem' type='pci'/>"), "host device passed through"),
        (domain("<interface type='ethernet'><script path='/tmp/x.sh'/></interface>"), "runs a script"),
        (
            domain("<disk type='file' device='disk'><source file='/var/lib/ferry/images/web.qcow2'/></disk>"),
            "in this host's own images folder",
        ),
        (domain("<disk type='file' device='disk'><source file='/srv/../etc/shadow'/></disk>"), "not written plainly"),
        (domain(os_part="<kernel>relative/vmlinuz</kernel>"), "kernel path is refused"),
    ],
)
def test_a_definition_that_could_run_something_else_is_refused_with_why(xml, says):
    with pytest.raises(RestartRefused) as refused:
        restart_xml(xml, "web 1", UUID, IMAGES)
    assert says in str(refused.value)


@pytest.mark.parametrize(
    ("message", "locked"),
    [
        ('internal error: qemu unexpectedly closed the monitor: Failed to get "write" lock', True),
        ("resource busy: Lockspace resource '/srv/nfs/web.qcow2' is locked", True),
        ("Requested operation is not valid: network 'default' is not active", False),
        ("Cannot access storage file '/srv/nfs/web.qcow2': No such file or directory", False),
    ],
)
def test_a_disk_held_by_another_copy_is_told_apart_from_other_refusals(message, locked):
    assert lock_refusal(message) is locked
