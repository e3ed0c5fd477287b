import msgspec
import pytest

from ferry.coordinator.admission import Admit, Queued, admit
from ferry.coordinator.placement import PlacementRules
from ferry.coordinator.session_rules import (
    check_named_dest,
    demand_of,
    find_source,
    host_facts,
    reported_demand,
    rules_for,
)
from ferry.proto.agent import DiskInfo, VmDescription
from ferry.proto.api import HostState, HostView
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import Capacity, HealthState, Versions, VmInfo, VmState
from ferry.proto.limits import Limits
from ferry.proto.session import Demand, MigrateOptions, Session, SessionState, StorageMode


def vm(name="g1", state=VmState.RUNNING, vcpus=2, memory_mib=1024) -> VmInfo:
    return VmInfo(name=name, uuid=f"u-{name}", vcpus=vcpus, memory_mib=memory_mib, state=state)


def view(host="hv1", state=HostState.UP, vms=(), **kw) -> HostView:
    base = {
        "health": HealthState.OK,
        "last_seen_age": 0.5,
        "capacity": Capacity(cpus=8, memory_total_mib=16384, memory_free_mib=12000, vcpus_used=4, memory_used_mib=2048),
        "versions": Versions(libvirt="9.0.0", qemu="7.2.0", agent="0.1.0"),
        "arch": "x86_64",
    }
    return HostView(host=host, state=state, vms=list(vms), **{**base, **kw})


def session(vm="g1", source="hv1", dest="hv2", state=SessionState.MIGRATING, vcpus=2, memory_mib=1024,
            storage=StorageMode.AUTO, id="sess01") -> Session:
    return Session(
        id=id, vm=vm, source=source, dest=dest, state=state, created_at=1.0, updated_at=2.0,
        options=MigrateOptions(storage=storage), demand=Demand(vcpus=vcpus, memory_mib=memory_mib),
    )


def raised(fn, *args) -> FerryError:
    with pytest.raises(FerryError) as info:
        fn(*args)
    return info.value


# find_source


def test_a_named_source_that_is_up_is_the_source():
    hosts = [view("hv1"), view("hv2", vms=[vm()])]
    assert find_source("g1", "hv1", hosts).host == "hv1"  # the name is trusted; the VM list is not consulted


def test_a_named_source_nobody_knows_is_an_unknown_host():
    error = raised(find_source, "g1", "hv9", [view("hv1")])
    assert error.code == ErrorCode.UNKNOWN_HOST
    assert error.message == "no host named hv9 has reported to the coordinator"


def test_a_named_source_that_is_lost_says_for_how_long():
    error = raised(find_source, "g1", "hv1", [view("hv1", state=HostState.LOST, last_seen_age=42.4)])
    assert error.code == ErrorCode.HOST_LOST
    assert error.message == "hv1 is lost (no heartbeat within its timeout); its VMs cannot be live-migrated"


def test_without_a_name_the_source_is_the_host_running_the_vm():
    hosts = [view("hv1", vms=[vm("other")]), view("hv2", vms=[vm("g1")]), view("hv3")]
    assert find_source("g1", None, hosts).host == "hv2"


def test_a_vm_nobody_reports_is_unknown():
    error = raised(find_source, "g1", None, [view("hv1", vms=[vm("g2")]), view("hv2")])
    assert error.code == ErrorCode.UNKNOWN_VM
    assert error.message == "no host reports a VM named g1"


def test_a_vm_that_is_not_running_anywhere_is_a_conflict_naming_where_it_is_known():
    hosts = [view("hv1", vms=[vm(state=VmState.SHUTOFF)]), view("hv2", vms=[vm(state=VmState.PAUSED)])]
    error = raised(find_source, "g1", None, hosts)
    assert error.code == ErrorCode.CONFLICT
    assert error.message == "g1 is not running (known on hv1, hv2); only running VMs are live-migrated"


def test_a_vm_running_on_two_hosts_is_a_conflict_asking_for_from():
    hosts = [view("hv1", vms=[vm()]), view("hv2", vms=[vm()]), view("hv3", vms=[vm(state=VmState.SHUTOFF)])]
    error = raised(find_source, "g1", None, hosts)
    assert error.code == ErrorCode.CONFLICT
    assert error.message == "g1 is reported running on hv1, hv2; name the source with --from"


def test_a_running_copy_wins_over_a_stopped_one():
    hosts = [view("hv1", vms=[vm(state=VmState.SHUTOFF)]), view("hv2", vms=[vm()])]
    assert find_source("g1", None, hosts).host == "hv2"


def test_a_vm_found_on_a_lost_host_cannot_be_moved():
    hosts = [view("hv1", state=HostState.LOST, vms=[vm()]), view("hv2")]
    error = raised(find_source, "g1", None, hosts)
    assert error.code == ErrorCode.HOST_LOST
    assert error.message == "g1 runs on hv1, which is lost; its VMs cannot be live-migrated"


# check_named_dest


def test_a_destination_that_is_the_source_is_a_bad_request():
    error = raised(check_named_dest, "hv1", "hv1", [view("hv1")])
    assert error.code == ErrorCode.BAD_REQUEST
    assert error.message == "the destination hv1 is the source; nothing to move"


def test_an_unknown_destination_is_an_unknown_host():
    error = raised(check_named_dest, "hv9", "hv1", [view("hv1"), view("hv2")])
    assert error.code == ErrorCode.UNKNOWN_HOST and "hv9" in error.message


def test_a_lost_destination_says_for_how_long():
    error = raised(check_named_dest, "hv2", "hv1", [view("hv1"), view("hv2", state=HostState.LOST, last_seen_age=9.6)])
    assert error.code == ErrorCode.HOST_LOST
    assert error.message == "the destination hv2 is lost (no heartbeat within its timeout)"


def test_a_destination_that_is_up_is_returned_whatever_its_capacity():
    full = Capacity(cpus=1, memory_total_mib=1024, memory_free_mib=0)
    assert check_named_dest("hv2", "hv1", [view("hv1"), view("hv2", capacity=full)]).host == "hv2"


def test_an_unhealthy_destination_is_still_the_destinations_own_call():
    dest = view("hv2", health=HealthState.CRITICAL)
    assert check_named_dest("hv2", "hv1", [view("hv1"), dest]) is dest


# host_facts


def test_host_facts_copy_each_report():
    (facts,) = host_facts([view("hv1")], [])
    assert (facts.name, facts.up, facts.health, facts.cpus, facts.vcpus_used) == ("hv1", True, HealthState.OK, 8, 4)
    assert (facts.memory_total_mib, facts.memory_free_mib, facts.memory_used_mib) == (16384, 12000, 2048)
    assert (facts.libvirt_version, facts.qemu_version, facts.arch) == ("9.0.0", "7.2.0", "x86_64")
    assert (facts.reserved_vcpus, facts.reserved_memory_mib) == (0, 0)


def test_a_lost_host_is_not_up_and_an_unknown_arch_is_x86_64():
    (facts,) = host_facts([view("hv1", state=HostState.LOST, arch="")], [])
    assert not facts.up and facts.arch == "x86_64"


def reserved(hosts, sessions) -> dict[str, tuple[int, int]]:
    return {f.name: (f.reserved_vcpus, f.reserved_memory_mib) for f in host_facts(hosts, sessions)}


def test_sessions_in_flight_reserve_their_size_on_their_destination():
    hosts = [view("hv1", vms=[vm("g1"), vm("g2")]), view("hv2"), view("hv3")]
    sessions = [
        session("g1", dest="hv2", vcpus=2, memory_mib=1024, id="sess01"),
        session("g2", dest="hv2", vcpus=4, memory_mib=4096, state=SessionState.PREPARING, id="sess02"),
        session("g3", dest="hv3", vcpus=1, memory_mib=512, state=SessionState.POSTCOPY, id="sess03"),
    ]
    assert reserved(hosts, sessions) == {"hv1": (0, 0), "hv2": (6, 5120), "hv3": (1, 512)}


def test_the_reservation_ends_once_the_vm_shows_in_the_destinations_report():
    sessions = [session("g1", dest="hv2")]
    before = [view("hv1", vms=[vm("g1")]), view("hv2")]
    after = [view("hv1"), view("hv2", vms=[vm("g1", state=VmState.PAUSED)])]
    assert reserved(before, sessions)["hv2"] == (2, 1024)
    assert reserved(after, sessions)["hv2"] == (0, 0)


def test_a_vm_on_another_host_does_not_end_the_reservation():
    sessions = [session("g1", dest="hv2")]
    hosts = [view("hv1", vms=[vm("g1")]), view("hv2"), view("hv3", vms=[vm("g1")])]
    assert reserved(hosts, sessions)["hv2"] == (2, 1024)


@pytest.mark.parametrize("state", [SessionState.FAILED, SessionState.CANCELLED])
def test_failed_and_cancelled_sessions_reserve_nothing(state):
    assert reserved([view("hv1"), view("hv2")], [session(state=state)])["hv2"] == (0, 0)


def test_a_completed_session_reserves_until_its_vm_shows_in_the_destinations_report():
    done = session("g1", dest="hv2", state=SessionState.COMPLETED)
    assert reserved([view("hv1"), view("hv2")], [done])["hv2"] == (2, 1024)
    assert reserved([view("hv1"), view("hv2", vms=[vm("g1")])], [done])["hv2"] == (0, 0)


def test_a_draining_host_is_marked_for_placement():
    facts = host_facts([view("hv1"), msgspec.structs.replace(view("hv2"), draining=True)], [])
    assert [(f.name, f.draining) for f in facts] == [("hv1", False), ("hv2", True)]


def test_a_draining_destination_is_refused_with_its_reason():
    hosts = [view("hv1"), msgspec.structs.replace(view("hv2"), draining=True, drain_reason="operator")]
    with pytest.raises(FerryError) as refused:
        check_named_dest("hv2", "hv1", hosts)
    assert refused.value.code == "conflict"
    assert refused.value.message == "the destination hv2 is draining (operator): no new VMs are placed there"


def test_reported_demand_takes_the_size_from_the_source_report():
    demand = reported_demand("g1", view("hv1", vms=[vm("g1")]))
    assert (demand.name, demand.source, demand.vcpus, demand.memory_mib) == ("g1", "hv1", 2, 1024)
    assert reported_demand("gone", view("hv1")).memory_mib == 0


def test_a_session_without_a_destination_reserves_nothing():
    assert reserved([view("hv1"), view("hv2")], [session(dest=None, state=SessionState.QUEUED)]) == {
        "hv1": (0, 0), "hv2": (0, 0)}


def test_a_queued_session_reserves_nothing_on_the_destination_it_hopes_for():
    # A drain's plan (or a host the user named) is a wish until admission: the
    # session queued for it must not hold room against itself.
    hoping = session(dest="hv2", state=SessionState.QUEUED)
    named = msgspec.structs.replace(session("g2", dest="hv2", id="sess02", state=SessionState.QUEUED), dest_requested=True)
    assert reserved([view("hv1", vms=[vm("g1"), vm("g2")]), view("hv2")], [hoping, named])["hv2"] == (0, 0)


def room_for_three(name, *arrived: str) -> HostView:
    """A destination as the simulated agent reports it: 1024 MiB kept for the host,
    room for exactly three 512 MiB VMs with placement's 128 MiB margin."""
    total, used = 1024 + 3 * 512 + 128, 512 * len(arrived)
    capacity = Capacity(cpus=8, memory_total_mib=total, memory_free_mib=total - 1024 - used,
                        vcpus_used=len(arrived), memory_used_mib=used)
    return view(name, vms=[vm(v, vcpus=1, memory_mib=512) for v in arrived], capacity=capacity)


def test_two_drains_queued_for_exactly_the_room_left_are_admitted_not_held_back():
    # The first drain's moves are done (s1g0 on d1, s1g1 and s1g2 on d2, reported);
    # the second drain planned without seeing them: d1, d2, d1. Room is left for
    # exactly its three VMs, two on d1 and one on d2.
    s2 = view("s2", vms=[vm(f"s2g{i}", vcpus=1, memory_mib=512) for i in range(3)])
    hosts = [s2, room_for_three("d1", "s1g0"), room_for_three("d2", "s1g1", "s1g2")]
    waiting = [
        session(f"s2g{i}", source="s2", dest=hint, state=SessionState.QUEUED, vcpus=1, memory_mib=512, id=f"q{i}")
        for i, hint in enumerate(["d1", "d2", "d1"])
    ]
    queue = [Queued(s.id, reported_demand(s.vm, s2), created_at=float(i), hint=s.dest) for i, s in enumerate(waiting)]
    limits = Limits(cluster=5, outbound_per_host=3, inbound_per_host=1)
    decisions = admit(limits, queue, [], host_facts(hosts, waiting))
    assert decisions[:2] == [Admit("q0", "d1", alternatives=["d2"]), Admit("q1", "d2")]
    assert decisions[2].code == "inbound_limit"  # not capacity_held: it only waits its turn

    # Once those two have arrived, the last one still fits on d1.
    hosts = [s2, room_for_three("d1", "s1g0", "s2g0"), room_for_three("d2", "s1g1", "s1g2", "s2g1")]
    done = [msgspec.structs.replace(s, state=SessionState.COMPLETED) for s in waiting[:2]]
    (last,) = admit(limits, queue[2:], [], host_facts(hosts, [*done, waiting[2]]))
    assert last == Admit("q2", "d1")


def test_a_session_towards_a_host_that_never_reported_adds_no_facts():
    assert [f.name for f in host_facts([view("hv1")], [session(dest="hv7")])] == ["hv1"]


def test_host_facts_accept_generators():
    facts = host_facts((h for h in [view("hv1"), view("hv2")]), (s for s in [session()]))
    assert [(f.name, f.reserved_memory_mib) for f in facts] == [("hv1", 0), ("hv2", 1024)]


# rules_for


def test_shared_storage_forbids_storage_copy_and_keeps_the_rest():
    base = PlacementRules(cpu_allocation_ratio=2.0, memory_margin_mib=256)
    assert rules_for(session(storage=StorageMode.SHARED), base) == PlacementRules(
        cpu_allocation_ratio=2.0, memory_margin_mib=256, allow_storage_copy=False)


@pytest.mark.parametrize("storage", [StorageMode.COPY, StorageMode.AUTO])
def test_copy_and_auto_keep_the_base_rules(storage):
    base = PlacementRules(cpu_allocation_ratio=2.0, memory_margin_mib=256)
    assert rules_for(session(storage=storage), base) is base


def test_rules_default_to_placements_defaults():
    assert rules_for(session()) == PlacementRules()
    assert rules_for(session(storage=StorageMode.SHARED)).allow_storage_copy is False


# demand_of


def test_demand_takes_size_from_the_vm_and_versions_from_the_source():
    description = VmDescription(name="g1", uuid="u-g1", vcpus=4, memory_mib=2048, arch="aarch64")
    demand = demand_of(description, view("hv1", versions=Versions(libvirt="10.0.0", qemu="8.2.0")))
    assert (demand.name, demand.source, demand.vcpus, demand.memory_mib) == ("g1", "hv1", 4, 2048)
    assert (demand.libvirt_version, demand.qemu_version, demand.arch) == ("10.0.0", "8.2.0", "aarch64")
    assert demand.local_disks is False


@pytest.mark.parametrize(
    "vm_arch, host_arch, arch",
    [("aarch64", "x86_64", "aarch64"), ("", "aarch64", "aarch64"), ("", "", "x86_64")],
)
def test_demand_arch_falls_back_to_the_source_then_x86_64(vm_arch, host_arch, arch):
    description = VmDescription(name="g1", uuid="u", vcpus=1, memory_mib=256, arch=vm_arch)
    assert demand_of(description, view("hv1", arch=host_arch)).arch == arch


@pytest.mark.parametrize(
    "disks, local",
    [
        ([], False),
        ([DiskInfo(target="vda", path="/srv/nfs/g1.qcow2")], False),
        ([DiskInfo(target="vda", path="/srv/nfs/g1.qcow2"),
          DiskInfo(target="vdb", path="/var/lib/libvirt/images/g1-data.raw", local=True)], True),
    ],
)
def test_demand_has_local_disks_when_any_disk_is_local(disks, local):
    description = VmDescription(name="g1", uuid="u", vcpus=1, memory_mib=256, disks=disks)
    assert demand_of(description, view("hv1")).local_disks is local
