import dataclasses

import msgspec
import pytest

from ferry.agent.hypervisor import NodeFacts
from ferry.agent.incoming import IncomingFacts, Refusal, judge_incoming
from ferry.proto.agent import VmDescription
from ferry.proto.host import Versions, VmState

VM = VmDescription(name="g1", uuid="u-1", vcpus=2, memory_mib=1024, arch="x86_64")
SOURCE_VERSIONS = Versions(libvirt="9.0.0", qemu="7.2.0")
NODE = NodeFacts(
    host_uuid="h-2", cpu_model="EPYC-Rome", arch="x86_64", cpus=8, memory_total_mib=16384,
    memory_free_mib=8000, libvirt_version="9.0.0", qemu_version="7.2.0",
)
FACTS = IncomingFacts(
    host="hv2", node=NODE, reserved_memory_mib=0, existing_state=None, cpu_problem=None,
    storage_problems=[], memory_margin_mib=128,
)


def judge(vm=VM, versions=SOURCE_VERSIONS, node=None, **changes) -> Refusal | None:
    facts = dataclasses.replace(FACTS, **changes)
    if node:
        facts = dataclasses.replace(facts, node=dataclasses.replace(NODE, **node))
    return judge_incoming(vm, "hv1", versions, facts)


def test_a_host_with_room_and_matching_facts_accepts_the_vm():
    assert judge() is None


@pytest.mark.parametrize(
    "node, changes, code",
    [
        ({}, {"existing_state": VmState.RUNNING}, "vm_exists"),
        ({}, {"existing_state": VmState.SHUTOFF}, "vm_exists"),
        ({"arch": "aarch64"}, {}, "arch_mismatch"),
        ({"libvirt_version": "8.10.0"}, {}, "version_older"),
        ({"qemu_version": "7.1.9"}, {}, "version_older"),
        ({}, {"cpu_problem": "host lacks avx512f"}, "cpu_incompatible"),
        ({"memory_free_mib": 1151}, {}, "no_capacity"),  # 1024 + 128 margin needed
        ({}, {"reserved_memory_mib": 6849}, "no_capacity"),  # 8000 - 6849 = 1151
        ({}, {"storage_problems": ["/srv/nfs/g1.qcow2 is missing"]}, "storage_unreachable"),
    ],
)
def test_each_refusal_has_its_code(node, changes, code):
    refusal = judge(node=node, **changes)
    assert refusal is not None and refusal.code == code


@pytest.mark.parametrize(
    "node, changes",
    [
        ({}, {"existing_state": VmState.PAUSED}),
        ({"arch": "aarch64"}, {}),
        pytest.param({"libvirt_version": "8.10.0"}, {}, id="libvirt-older"),
        pytest.param({"qemu_version": "7.1.9"}, {}, id="qemu-older"),
        ({}, {"cpu_problem": "host lacks avx512f"}),
        ({"memory_free_mib": 100}, {}),
        ({}, {"storage_problems": ["/srv/nfs/g1.qcow2 is missing"]}),
    ],
)
def test_every_refusal_sentence_names_the_host_and_the_vm(node, changes):
    refusal = judge(node=node, **changes)
    assert refusal is not None and "hv2" in refusal.reason and "g1" in refusal.reason


def test_existing_domain_sentence_says_its_state():
    assert judge(existing_state=VmState.SHUTOFF).reason == "hv2 already has a domain named g1 (shutoff)"


def test_arch_mismatch_sentence():
    assert judge(node={"arch": "aarch64"}).reason == "hv2 is aarch64, g1 needs x86_64"


@pytest.mark.parametrize(
    "node, sentence",
    [
        ({"libvirt_version": "8.10.0"}, "hv2 runs libvirt 8.10.0, older than 9.0.0 on hv1 where g1 runs"),
        ({"qemu_version": "7.1.9"}, "hv2 runs QEMU 7.1.9, older than 7.2.0 on hv1 where g1 runs"),
    ],
)
def test_version_older_sentence_names_the_software_and_both_versions(node, sentence):
    assert judge(node=node).reason == sentence


def test_libvirt_is_checked_before_qemu():
    assert "libvirt" in judge(node={"libvirt_version": "8.0.0", "qemu_version": "6.0.0"}).reason


@pytest.mark.parametrize("vm_arch, node_arch", [("", "aarch64"), ("aarch64", "")])
def test_an_unknown_arch_on_either_side_is_no_mismatch(vm_arch, node_arch):
    assert judge(vm=msgspec.structs.replace(VM, arch=vm_arch), node={"arch": node_arch}) is None


@pytest.mark.parametrize(
    "versions, node",
    [
        (Versions(libvirt="", qemu="7.2.0"), {"libvirt_version": "1.0.0"}),
        (Versions(libvirt="9.0.0", qemu=""), {"qemu_version": "1.0.0"}),
    ],
)
def test_a_source_version_left_empty_is_not_compared(versions, node):
    assert judge(versions=versions, node=node) is None


@pytest.mark.parametrize(
    "node",
    [{"libvirt_version": "10.0.0"}, {"qemu_version": "8.0.0"}, {"libvirt_version": "9.0.1", "qemu_version": "7.2.22"}],
)
def test_a_newer_destination_is_accepted(node):
    assert judge(node=node) is None


def test_the_same_version_written_with_fewer_pieces_is_not_older():
    assert judge(node={"libvirt_version": "9.0"}) is None


@pytest.mark.parametrize(
    "free, reserved, margin, accepted",
    [
        (1152, 0, 128, True),  # exactly the VM plus the margin
        (1151, 0, 128, False),
        (1024, 0, 0, True),
        (1023, 0, 0, False),
        (8000, 6848, 128, True),
        (8000, 6849, 128, False),
        (1152, 0, 129, False),
    ],
)
def test_memory_needs_the_vm_plus_the_margin_after_reservations(free, reserved, margin, accepted):
    refusal = judge(node={"memory_free_mib": free}, reserved_memory_mib=reserved, memory_margin_mib=margin)
    assert (refusal is None) == accepted


def test_no_capacity_sentence_counts_reservations_and_margin():
    refusal = judge(reserved_memory_mib=7000)
    assert refusal.reason == "hv2 has 1000 MiB of memory free after reservations; g1 needs 1152 MiB"


def test_no_capacity_never_reports_negative_free_memory():
    refusal = judge(reserved_memory_mib=9000)
    assert refusal.code == "no_capacity"
    assert refusal.reason.startswith("hv2 has 0 MiB of memory free")


def test_cpu_sentence_carries_the_hypervisors_answer():
    refusal = judge(cpu_problem="this host has CPU model Haswell, the guest needs EPYC-Rome")
    assert refusal.reason == "hv2 cannot run g1's CPU: this host has CPU model Haswell, the guest needs EPYC-Rome"


def test_storage_sentence_joins_every_problem():
    refusal = judge(storage_problems=["vda: /srv/a.qcow2 is missing", "vdb: /srv/b.raw is not readable"])
    assert refusal.reason == (
        "hv2 cannot reach g1's disks: vda: /srv/a.qcow2 is missing; vdb: /srv/b.raw is not readable"
    )


@pytest.mark.parametrize(
    "node, changes, code",
    [
        ({"arch": "aarch64"}, {"existing_state": VmState.RUNNING}, "vm_exists"),
        ({"libvirt_version": "8.0.0"}, {"cpu_problem": "no"}, "version_older"),
        ({}, {"cpu_problem": "no", "reserved_memory_mib": 8000}, "cpu_incompatible"),
        ({"memory_free_mib": 0}, {"storage_problems": ["x"]}, "no_capacity"),
    ],
)
def test_the_first_failing_check_decides(node, changes, code):
    assert judge(node=node, **changes).code == code
