import dataclasses

import pytest

from ferry.coordinator.placement import (
    HostFacts,
    PlacementRules,
    VmDemand,
    available_memory_mib,
    rank,
    reject_reason,
    version_tuple,
)
from ferry.proto.host import HealthState

VM = VmDemand(name="g1", source="hv1", vcpus=2, memory_mib=1024, libvirt_version="9.0.0", qemu_version="7.2.0")


def host(name="hv2", **kw) -> HostFacts:
    base = dict(name=name, up=True, health=HealthState.OK, cpus=4, vcpus_used=0, memory_total_mib=8192,
                memory_free_mib=8000, memory_used_mib=0, libvirt_version="9.0.0", qemu_version="7.2.0")
    return HostFacts(**{**base, **kw})


@pytest.mark.parametrize(
    "changes, code",
    [
        (dict(name="hv1"), "same_host"),
        (dict(up=False), "host_lost"),
        (dict(draining=True), "host_draining"),
        (dict(health=HealthState.WARNING), "host_unhealthy"),
        (dict(health=HealthState.CRITICAL), "host_unhealthy"),
        (dict(arch="aarch64"), "arch_mismatch"),
        (dict(libvirt_version="8.9.9"), "version_older"),
        (dict(qemu_version="7.1.5"), "version_older"),
        (dict(memory_free_mib=1100), "no_capacity"),  # 1024 + 128 margin needed
        (dict(memory_used_mib=7100), "no_capacity"),  # accounting says 1092 left
        (dict(reserved_memory_mib=6900), "no_capacity"),
        (dict(vcpus_used=15), "no_capacity"),  # 15 + 2 > 4 * 4
        (dict(reserved_vcpus=15), "no_capacity"),
    ],
)
def test_rejections(changes, code):
    rejection = reject_reason(VM, host(**changes), PlacementRules())
    assert rejection is not None and rejection.code == code and rejection.reason


@pytest.mark.parametrize(
    "changes",
    [dict(), dict(libvirt_version="10.0.0"), dict(qemu_version="8.0.0"), dict(memory_free_mib=1152),
     dict(vcpus_used=14)],
)
def test_acceptable_hosts(changes):
    assert reject_reason(VM, host(**changes), PlacementRules()) is None


def test_no_capacity_sentence_has_numbers():
    r = reject_reason(VM, host(memory_free_mib=500), PlacementRules())
    assert r.reason == "hv2 has 500 MiB free for VMs, g1 needs 1152 MiB"


def test_storage_copy_rules():
    local = dataclasses.replace(VM, local_disks=True)
    shared = dataclasses.replace(VM, shared_storage=frozenset({"/srv/shared"}))
    no_copy = PlacementRules(allow_storage_copy=False)
    assert reject_reason(local, host(), no_copy).code == "storage_unreachable"
    assert reject_reason(local, host(), PlacementRules()) is None
    assert reject_reason(shared, host(), no_copy).code == "storage_unreachable"
    assert reject_reason(shared, host(storage=frozenset({"/srv/shared"})), no_copy) is None


def test_emptiest_host_wins_and_ties_break_by_name():
    hosts = [host("hv3", memory_used_mib=4096), host("hv2"), host("hv4"), host("hv1")]
    ranking = rank(VM, hosts)
    assert [name for name, _ in ranking.choices] == ["hv2", "hv4", "hv3"]
    assert ranking.best == "hv2"
    assert [r.host for r in ranking.rejections] == ["hv1"]


def test_shared_storage_reachable_is_preferred():
    shared = dataclasses.replace(VM, shared_storage=frozenset({"/srv/shared"}))
    hosts = [host("hv2"), host("hv3", storage=frozenset({"/srv/shared"}))]
    assert rank(shared, hosts).best == "hv3"


def test_nothing_fits():
    ranking = rank(VM, [host("hv2", up=False), host("hv3", memory_free_mib=10)])
    assert ranking.best is None
    assert [r.code for r in ranking.rejections] == ["host_lost", "no_capacity"]


@pytest.mark.parametrize("text, parsed", [("9.0.0", (9, 0, 0)), ("7.2.22", (7, 2, 22)), ("10.1", (10, 1, 0)),
                                          ("8.2.0-rc1", (8, 2, 0)), ("", (0, 0, 0))])
def test_version_tuple(text, parsed):
    assert version_tuple(text) == parsed


def test_available_memory_is_the_lower_of_kernel_and_accounting():
    assert available_memory_mib(host(memory_free_mib=3000, memory_used_mib=1000)) == 3000
    assert available_memory_mib(host(memory_free_mib=8000, memory_used_mib=6000)) == 2192
