import random
from collections import Counter

import pytest

from ferry.coordinator.admission import (
    Admit,
    Queued,
    Refuse,
    Slot,
    Wait,
    admit,
    cluster_full,
    cluster_waits,
    inbound_room,
    queue_order,
)
from ferry.coordinator.placement import (
    HostFacts,
    PlacementRules,
    VmDemand,
    available_memory_mib,
)
from ferry.proto.host import HealthState
from ferry.proto.limits import Limits

ROOMY = Limits(cluster=100, outbound_per_host=100, inbound_per_host=100)


def host(name, **kw) -> HostFacts:
    base = dict(name=name, up=True, health=HealthState.OK, cpus=4, vcpus_used=0, memory_total_mib=8192,
                memory_free_mib=8000, memory_used_mib=0, libvirt_version="9.0.0", qemu_version="7.2.0")
    return HostFacts(**{**base, **kw})


def queued(session_id, source="hv1", vm=None, vcpus=2, memory_mib=1024, created_at=1.0, **kw) -> Queued:
    demand = VmDemand(name=vm or f"vm-{session_id}", source=source, vcpus=vcpus, memory_mib=memory_mib,
                      libvirt_version="9.0.0", qemu_version="7.2.0")
    return Queued(session_id=session_id, demand=demand, created_at=created_at, **kw)


def slots(*pairs) -> list[Slot]:
    return [Slot(f"busy{i}", source, dest) for i, (source, dest) in enumerate(pairs)]


def by_id(decisions) -> dict:
    return {d.session_id: d for d in decisions}


def admitted(decisions) -> list[str]:
    return [d.session_id for d in decisions if isinstance(d, Admit)]


HOSTS = [host("hv1"), host("hv2"), host("hv3")]


# Order


def test_queue_order_is_evacuations_then_priority_then_age_then_id():
    sessions = [
        queued("old-low", created_at=1.0, priority=-5),
        queued("young-high", created_at=9.0, priority=50),
        queued("evac-young", created_at=8.0, evacuation=True),
        queued("evac-old-low", created_at=2.0, evacuation=True, priority=-100),
        queued("old-mid-b", created_at=3.0),
        queued("old-mid-a", created_at=3.0),
        queued("evac-high", created_at=9.0, evacuation=True, priority=10),
    ]
    order = [s.session_id for s in sorted(sessions, key=queue_order)]
    assert order == ["evac-high", "evac-young", "evac-old-low", "young-high", "old-mid-a", "old-mid-b", "old-low"]


def test_decisions_come_in_queue_order_one_per_session():
    queue = [queued("b", created_at=2.0), queued("c", created_at=3.0, priority=1), queued("a", created_at=1.0)]
    assert [d.session_id for d in admit(ROOMY, queue, [], HOSTS)] == ["c", "a", "b"]


def test_an_empty_queue_decides_nothing():
    assert admit(Limits(), [], slots(("hv1", "hv2")), HOSTS) == []


def test_an_evacuation_goes_ahead_of_a_higher_priority_user_session():
    queue = [queued("user", priority=100, created_at=1.0),
             queued("evac", source="hv3", created_at=5.0, evacuation=True)]
    decisions = by_id(admit(Limits(cluster=1), queue, [], HOSTS))
    assert isinstance(decisions["evac"], Admit)
    assert decisions["user"] == Wait("user", "cluster_limit", "1 migrations are in flight; the cluster limit is 1")


def test_a_higher_priority_session_goes_ahead_of_an_older_one():
    queue = [queued("old", created_at=1.0), queued("urgent", created_at=50.0, priority=10)]
    decisions = by_id(admit(Limits(cluster=1), queue, [], HOSTS))
    assert isinstance(decisions["urgent"], Admit) and decisions["old"].code == "cluster_limit"


def test_among_equal_priorities_the_oldest_goes_first():
    queue = [queued("young", created_at=7.0), queued("old", created_at=3.0), queued("middle", created_at=5.0)]
    assert admitted(admit(Limits(cluster=2), queue, [], HOSTS)) == ["old", "middle"]


def test_a_negative_priority_goes_after_the_default():
    queue = [queued("low", created_at=1.0, priority=-1), queued("normal", created_at=2.0)]
    assert admitted(admit(Limits(cluster=1), queue, [], HOSTS)) == ["normal"]


# The cluster limit


@pytest.mark.parametrize(
    "in_flight, expected",
    [(0, 3), (1, 2), (2, 1), (3, 0), (4, 0), (7, 0)],  # below, at and above a cluster limit of 3
)
def test_the_cluster_limit_counts_slots_in_flight_and_admissions_of_the_pass(in_flight, expected):
    busy = slots(*[(f"src{i}", f"dst{i}") for i in range(in_flight)])
    queue = [queued(f"s{i}", source=f"hv{1 + i % 3}", created_at=i) for i in range(4)]
    limits = Limits(cluster=3, outbound_per_host=10, inbound_per_host=10)
    decisions = admit(limits, queue, busy, HOSTS)
    assert len(admitted(decisions)) == expected
    assert admitted(decisions) == [f"s{i}" for i in range(expected)]
    waits = [d for d in decisions if not isinstance(d, Admit)]
    assert [w.code for w in waits] == ["cluster_limit"] * (4 - expected)
    assert all(isinstance(w, Wait) for w in waits)


def test_the_cluster_limit_sentence_names_both_numbers():
    busy = slots(("hv1", "hv2"), ("hv2", "hv3"))
    (decision,) = admit(Limits(cluster=2), [queued("s1", source="hv3")], busy, HOSTS)
    assert decision == Wait("s1", "cluster_limit", "2 migrations are in flight; the cluster limit is 2")


def test_the_cluster_limit_is_checked_before_the_host_limits():
    busy = slots(("hv1", "hv2"))
    limits = Limits(cluster=1, outbound_per_host=1, inbound_per_host=1)
    (decision,) = admit(limits, [queued("s1", source="hv1")], busy, HOSTS)
    assert decision.code == "cluster_limit"


def test_sessions_that_wait_or_are_refused_take_no_slot():
    queue = [
        queued("too-big", memory_mib=100_000, created_at=1.0),
        queued("blocked", source="hv2", created_at=2.0),
        queued("fits", source="hv3", created_at=3.0),
    ]
    limits = Limits(cluster=2, outbound_per_host=1, inbound_per_host=5)
    decisions = by_id(admit(limits, queue, slots(("hv2", "hv9")), HOSTS + [host("hv4")]))
    assert isinstance(decisions["too-big"], Refuse)
    assert decisions["blocked"].code == "outbound_limit"
    assert isinstance(decisions["fits"], Admit)  # the last cluster slot is still free for it


# The outbound limit


@pytest.mark.parametrize(
    "leaving, expected",
    [(0, 2), (1, 1), (2, 0), (3, 0)],  # below, at and above an outbound limit of 2
)
def test_the_outbound_limit_counts_what_the_source_already_sends(leaving, expected):
    busy = slots(*[("hv1", "hv9")] * leaving)
    queue = [queued(f"s{i}", created_at=i) for i in range(3)]
    limits = Limits(cluster=10, outbound_per_host=2, inbound_per_host=10)
    decisions = admit(limits, queue, busy, HOSTS + [host("hv4")])
    assert admitted(decisions) == [f"s{i}" for i in range(expected)]
    assert [d.code for d in decisions if isinstance(d, Wait)] == ["outbound_limit"] * (3 - expected)


def test_the_outbound_limit_sentence_names_the_source_and_both_numbers():
    queue = [queued("s1", created_at=1.0), queued("s2", created_at=2.0), queued("s3", created_at=3.0)]
    limits = Limits(cluster=10, outbound_per_host=2, inbound_per_host=10)
    decisions = by_id(admit(limits, queue, [], HOSTS))
    assert decisions["s3"] == Wait("s3", "outbound_limit", "hv1 already sends 2 migrations; the limit per host is 2")


def test_the_outbound_limit_of_one_source_does_not_hold_another():
    limits = Limits(cluster=10, outbound_per_host=1, inbound_per_host=10)
    queue = [queued("a", source="hv1"), queued("b", source="hv2")]
    assert admitted(admit(limits, queue, slots(("hv1", "hv3")), HOSTS)) == ["b"]


def test_slots_arriving_on_a_host_do_not_count_against_what_it_sends():
    limits = Limits(cluster=10, outbound_per_host=1, inbound_per_host=10)
    busy = slots(("hv2", "hv1"), ("hv3", "hv1"))
    assert admitted(admit(limits, [queued("s1", source="hv1")], busy, HOSTS)) == ["s1"]


def test_a_blocked_high_priority_session_does_not_block_a_lower_one_from_another_source():
    limits = Limits(cluster=5, outbound_per_host=1, inbound_per_host=5)
    queue = [queued("high", source="hv1", priority=90, created_at=1.0),
             queued("low", source="hv3", priority=-10, created_at=2.0)]
    decisions = by_id(admit(limits, queue, slots(("hv1", "hv2")), HOSTS))
    assert decisions["high"].code == "outbound_limit"
    assert isinstance(decisions["low"], Admit)


def test_an_evacuation_still_keeps_to_the_outbound_limit():
    limits = Limits(cluster=10, outbound_per_host=1, inbound_per_host=10)
    queue = [queued("evac", evacuation=True, priority=100), queued("other", source="hv2")]
    decisions = by_id(admit(limits, queue, slots(("hv1", "hv3")), HOSTS))
    assert decisions["evac"].code == "outbound_limit"
    assert isinstance(decisions["other"], Admit)


# The inbound limit


@pytest.mark.parametrize(
    "arriving, admits",
    [(0, True), (1, True), (2, False), (3, False)],  # below, at and above an inbound limit of 2
)
def test_a_named_destination_respects_the_inbound_limit(arriving, admits):
    busy = slots(*[(f"src{i}", "hv2") for i in range(arriving)])
    limits = Limits(cluster=10, outbound_per_host=10, inbound_per_host=2)
    (decision,) = admit(limits, [queued("s1", dest="hv2")], busy, HOSTS)
    if admits:
        assert decision == Admit("s1", "hv2")
    else:
        assert decision == Wait(
            "s1", "inbound_limit", f"hv2 already receives {arriving} migrations; the limit per host is 2"
        )


def test_named_destinations_fill_up_within_one_pass():
    limits = Limits(cluster=10, outbound_per_host=10, inbound_per_host=2)
    queue = [queued(f"s{i}", source=f"src{i}", dest="hv2", created_at=i) for i in range(3)]
    decisions = admit(limits, queue, [], HOSTS)
    assert admitted(decisions) == ["s0", "s1"]
    assert decisions[2] == Wait("s2", "inbound_limit", "hv2 already receives 2 migrations; the limit per host is 2")


def test_placement_skips_candidates_whose_inbound_is_full():
    # hv2 has the most room, but already receives two migrations.
    hosts = [host("hv1"), host("hv2"), host("hv3", memory_used_mib=2048), host("hv4", memory_used_mib=4096)]
    limits = Limits(cluster=10, outbound_per_host=10, inbound_per_host=2)
    (decision,) = admit(limits, [queued("s1")], slots(("hv5", "hv2"), ("hv6", "hv2")), hosts)
    assert decision == Admit("s1", "hv3", alternatives=["hv4"])


def test_placement_spreads_arrivals_when_the_inbound_limit_is_reached_within_a_pass():
    limits = Limits(cluster=10, outbound_per_host=10, inbound_per_host=1)
    hosts = [host("hv2"), host("hv3"), host("hv4")]
    queue = [queued(f"s{i}", source=f"src{i}", memory_mib=256, vcpus=1, created_at=i) for i in range(4)]
    decisions = admit(limits, queue, [], hosts)
    assert sorted(d.dest for d in decisions if isinstance(d, Admit)) == ["hv2", "hv3", "hv4"]
    assert decisions[3].code == "inbound_limit"


def test_when_every_candidate_is_inbound_full_the_session_waits_naming_them():
    limits = Limits(cluster=10, outbound_per_host=10, inbound_per_host=1)
    busy = slots(("x", "hv2"), ("y", "hv3"))
    (decision,) = admit(limits, [queued("s1", vm="g1")], busy, HOSTS)
    assert decision == Wait(
        "s1", "inbound_limit", "every host that can take g1 (hv2, hv3) already receives 1 migrations"
    )


def test_the_inbound_sentence_lists_at_most_five_hosts():
    hosts = [host(f"hv{i}") for i in range(2, 9)]
    limits = Limits(cluster=20, outbound_per_host=10, inbound_per_host=1)
    busy = slots(*[(f"x{i}", f"hv{i}") for i in range(2, 9)])
    (decision,) = admit(limits, [queued("s1", vm="g1")], busy, hosts)
    assert decision.code == "inbound_limit"
    assert decision.reason == (
        "every host that can take g1 (hv2, hv3, hv4, hv5, hv6 …) already receives 1 migrations"
    )


def test_an_inbound_full_host_does_not_stop_a_vm_from_elsewhere_going_to_another_host():
    limits = Limits(cluster=10, outbound_per_host=10, inbound_per_host=1)
    queue = [queued("named", source="hv1", dest="hv2", priority=5), queued("placed", source="hv3")]
    decisions = by_id(admit(limits, queue, slots(("hv4", "hv2")), HOSTS))
    assert decisions["named"].code == "inbound_limit"
    assert decisions["placed"] == Admit("placed", "hv1", alternatives=[])


# Placement


def test_the_best_host_is_chosen_and_the_others_are_listed_best_first():
    hosts = [host("hv1"), host("hv4", memory_used_mib=4096), host("hv2"), host("hv3", memory_used_mib=2048)]
    (decision,) = admit(ROOMY, [queued("s1")], [], hosts)
    assert decision == Admit("s1", "hv2", alternatives=["hv3", "hv4"])


def test_hosts_that_cannot_take_the_vm_are_not_alternatives():
    hosts = [host("hv1"), host("hv2"), host("hv3", draining=True), host("hv4", up=False),
             host("hv5", health=HealthState.WARNING), host("hv6", memory_free_mib=500)]
    (decision,) = admit(ROOMY, [queued("s1")], [], hosts)
    assert decision == Admit("s1", "hv2", alternatives=[])


def test_a_hint_that_can_take_the_vm_is_preferred_over_the_best_host():
    hosts = [host("hv1"), host("hv2"), host("hv3", memory_used_mib=2048), host("hv4", memory_used_mib=4096)]
    (decision,) = admit(ROOMY, [queued("s1", hint="hv4")], [], hosts)
    assert decision == Admit("s1", "hv4", alternatives=["hv2", "hv3"])


@pytest.mark.parametrize(
    "hint_host, busy",
    [
        (host("hv4", memory_free_mib=500), []),  # no room
        (host("hv4", draining=True), []),
        (host("hv4", health=HealthState.CRITICAL), []),
        (host("hv4"), slots(("x", "hv4"), ("y", "hv4"))),  # inbound full
    ],
)
def test_a_hint_that_cannot_take_the_vm_now_is_passed_over(hint_host, busy):
    hosts = [host("hv1"), host("hv2"), host("hv3", memory_used_mib=2048), hint_host]
    limits = Limits(cluster=10, outbound_per_host=10, inbound_per_host=2)
    (decision,) = admit(limits, [queued("s1", hint="hv4")], busy, hosts)
    assert decision == Admit("s1", "hv2", alternatives=["hv3"])


def test_a_hint_for_a_host_nobody_reports_is_passed_over():
    (decision,) = admit(ROOMY, [queued("s1", hint="hv9")], [], HOSTS)
    assert decision == Admit("s1", "hv2", alternatives=["hv3"])


def test_avoided_hosts_are_neither_chosen_nor_alternatives():
    hosts = [host("hv1"), host("hv2"), host("hv3", memory_used_mib=1024), host("hv4", memory_used_mib=2048)]
    (decision,) = admit(ROOMY, [queued("s1", avoid=frozenset({"hv2", "hv4"}))], [], hosts)
    assert decision == Admit("s1", "hv3", alternatives=[])


def test_an_avoided_hint_is_not_used():
    (decision,) = admit(ROOMY, [queued("s1", hint="hv2", avoid=frozenset({"hv2"}))], [], HOSTS)
    assert decision == Admit("s1", "hv3", alternatives=[])


def test_when_every_host_is_avoided_the_session_is_refused_saying_where_it_failed():
    (decision,) = admit(ROOMY, [queued("s1", vm="g1", avoid=frozenset({"hv3", "hv2"}))], [], HOSTS)
    assert isinstance(decision, Refuse) and decision.code == "no_destination"
    assert decision.reason.startswith("no host can take g1: ")
    assert decision.reason.endswith("; already failed on hv2, hv3")


def test_a_vm_no_host_can_take_is_refused_with_each_hosts_reason():
    hosts = [host("hv1"), host("hv2", up=False), host("hv3", memory_free_mib=500)]
    (decision,) = admit(ROOMY, [queued("s1", vm="g1")], [], hosts)
    assert decision == Refuse(
        "s1",
        "no_destination",
        "no host can take g1: hv1: hv1 is where g1 runs now; hv2: hv2 is lost (no heartbeat); "
        "hv3: hv3 has 500 MiB free for VMs, g1 needs 1152 MiB",
    )


def test_a_vm_is_refused_when_no_host_reports_at_all():
    (decision,) = admit(ROOMY, [queued("s1", vm="g1")], [], [])
    assert decision == Refuse("s1", "no_destination", "no host can take g1: no other host reports")


def test_a_refusal_comes_before_the_inbound_limit():
    # Waiting for an inbound slot would not help a VM that fits nowhere.
    limits = Limits(cluster=10, outbound_per_host=10, inbound_per_host=1)
    busy = slots(("x", "hv2"), ("y", "hv3"))
    (decision,) = admit(limits, [queued("s1", memory_mib=100_000)], busy, HOSTS)
    assert isinstance(decision, Refuse)


def test_the_session_rules_are_passed_to_placement():
    tight = PlacementRules(memory_margin_mib=7000)
    hosts = [host("hv1"), host("hv2")]
    assert isinstance(admit(ROOMY, [queued("s1")], [], hosts)[0], Admit)
    assert isinstance(admit(ROOMY, [queued("s1", rules=tight)], [], hosts)[0], Refuse)


# A named destination


@pytest.mark.parametrize(
    "dest_host",
    [host("hv2", memory_free_mib=10), host("hv2", health=HealthState.CRITICAL), host("hv2", draining=True),
     host("hv2", up=False)],
)
def test_a_named_destination_is_admitted_without_asking_placement(dest_host):
    (decision,) = admit(ROOMY, [queued("s1", dest="hv2")], [], [host("hv1"), dest_host, host("hv3")])
    assert decision == Admit("s1", "hv2", alternatives=[])


def test_a_named_destination_nobody_reports_is_still_admitted():
    (decision,) = admit(ROOMY, [queued("s1", dest="hv9")], [], HOSTS)
    assert decision == Admit("s1", "hv9")


def test_a_named_destination_takes_capacity_from_later_placements():
    # hv2 has room for one 3000 MiB VM; the named one takes it.
    hosts = [host("hv1"), host("hv2", memory_free_mib=4000), host("hv3", memory_free_mib=3500)]
    queue = [queued("named", source="hv1", dest="hv2", memory_mib=3000, created_at=1.0),
             queued("placed", source="hv1", memory_mib=3000, created_at=2.0)]
    decisions = by_id(admit(ROOMY, queue, [], hosts))
    assert decisions["named"] == Admit("named", "hv2")
    assert decisions["placed"] == Admit("placed", "hv3", alternatives=[])


# Capacity counted across one pass


def test_two_vms_that_each_fit_alone_but_not_together_go_to_different_hosts():
    hosts = [host("hv1"), host("hv2", memory_free_mib=5000), host("hv3", memory_free_mib=4000)]
    queue = [queued("a", memory_mib=3000, created_at=1.0), queued("b", memory_mib=3000, created_at=2.0)]
    decisions = by_id(admit(ROOMY, queue, [], hosts))
    assert decisions["a"] == Admit("a", "hv2", alternatives=["hv3"])
    assert decisions["b"] == Admit("b", "hv3", alternatives=[])


def test_the_second_of_two_vms_that_only_fit_one_at_a_time_waits_for_the_first():
    hosts = [host("hv1"), host("hv2", memory_free_mib=5000)]
    queue = [queued("a", vm="g1", memory_mib=3000, created_at=1.0),
             queued("b", vm="g2", memory_mib=3000, created_at=2.0)]
    decisions = by_id(admit(ROOMY, queue, [], hosts))
    assert decisions["a"] == Admit("a", "hv2")
    # hv2's room is held for g1 in flight: if that move fails, g2 can go.
    assert decisions["b"] == Wait(
        "b", "capacity_held", "the hosts that could take g2 (hv2) hold their room for migrations in flight"
    )


def test_a_vm_that_fits_nowhere_even_without_reservations_is_refused():
    hosts = [host("hv1"), host("hv2", memory_free_mib=2000, reserved_memory_mib=500)]
    decisions = by_id(admit(ROOMY, [queued("b", vm="g2", memory_mib=3000)], [], hosts))
    assert decisions["b"] == Refuse(
        "b", "no_destination", "no host can take g2: hv1: hv1 is where g2 runs now; "
        "hv2: hv2 has 1500 MiB free for VMs, g2 needs 3128 MiB"
    )


def test_a_vm_kept_out_only_by_reservations_of_sessions_in_flight_waits():
    hosts = [host("hv1"), host("hv2", memory_free_mib=5000, reserved_memory_mib=3000)]
    decisions = by_id(admit(ROOMY, [queued("b", vm="g2", memory_mib=3000)], [], hosts))
    assert decisions["b"] == Wait(
        "b", "capacity_held", "the hosts that could take g2 (hv2) hold their room for migrations in flight"
    )


def test_vcpus_are_counted_across_one_pass_too():
    # 4 CPUs at ratio 4: 16 vCPUs; 10 are used, so one 4-vCPU VM fits and a second does not.
    hosts = [host("hv2", vcpus_used=10), host("hv3", vcpus_used=12, memory_used_mib=4096)]
    queue = [queued(f"s{i}", source=f"src{i}", vcpus=4, memory_mib=256, created_at=i) for i in range(3)]
    decisions = admit(ROOMY, queue, [], hosts)
    assert [(d.session_id, getattr(d, "dest", None)) for d in decisions] == [("s0", "hv2"), ("s1", "hv3"), ("s2", None)]
    assert isinstance(decisions[2], Wait) and decisions[2].code == "capacity_held"


def test_the_most_room_goes_first_and_later_vms_spread_out():
    hosts = [host("hv2"), host("hv3")]
    queue = [queued(f"s{i}", source="src", memory_mib=2048, vcpus=1, created_at=i) for i in range(4)]
    limits = Limits(cluster=10, outbound_per_host=10, inbound_per_host=10)
    dests = [d.dest for d in admit(limits, queue, [], hosts)]
    assert sorted(dests) == ["hv2", "hv2", "hv3", "hv3"]


# inbound_room


@pytest.mark.parametrize(
    "arriving, ignoring, room",
    [
        (0, None, True),
        (1, None, True),
        (2, None, False),
        (3, None, False),
        (2, "busy0", True),  # the session's own slot does not count against it
        (2, "someone-else", False),
        (3, "busy0", False),
    ],
)
def test_inbound_room(arriving, ignoring, room):
    busy = slots(*[(f"src{i}", "hv2") for i in range(arriving)])
    assert inbound_room(Limits(inbound_per_host=2), busy, "hv2", ignoring=ignoring) is room


def test_inbound_room_counts_only_the_host_asked_about():
    busy = slots(("hv1", "hv3"), ("hv2", "hv3"), ("hv3", "hv2"))
    assert inbound_room(Limits(inbound_per_host=2), busy, "hv2")
    assert not inbound_room(Limits(inbound_per_host=2), busy, "hv3")


# Properties over random clusters and queues


def random_cluster(seed: int):
    rng = random.Random(seed)
    limits = Limits(cluster=rng.randint(1, 8), outbound_per_host=rng.randint(1, 3), inbound_per_host=rng.randint(1, 3))
    names = [f"hv{i}" for i in range(rng.randint(2, 7))]
    hosts = [
        host(
            name,
            cpus=rng.choice([2, 4, 8]),
            vcpus_used=rng.randint(0, 12),
            memory_total_mib=16384,
            memory_free_mib=rng.randint(0, 16384),
            memory_used_mib=rng.randint(0, 12000),
            reserved_memory_mib=rng.choice([0, 0, 1024]),
            health=rng.choice([HealthState.OK] * 5 + [HealthState.WARNING]),
            draining=rng.random() < 0.1,
        )
        for name in names
    ]
    # Slots in flight that respect the limits.
    busy, out, into = [], Counter(), Counter()
    for i in range(rng.randint(0, limits.cluster)):
        source, dest = rng.sample(names, 2)
        if out[source] < limits.outbound_per_host and into[dest] < limits.inbound_per_host:
            busy.append(Slot(f"busy{i}", source, dest))
            out[source] += 1
            into[dest] += 1
    queue = [
        queued(
            f"q{i}",
            source=rng.choice(names),
            vcpus=rng.randint(1, 8),
            memory_mib=rng.choice([512, 1024, 2048, 4096, 8192]),
            created_at=rng.uniform(0, 100),
            priority=rng.randint(-3, 3),
            evacuation=rng.random() < 0.2,
            hint=rng.choice([None, None, rng.choice(names)]),
            avoid=frozenset(rng.sample(names, rng.randint(0, 1))),
        )
        for i in range(rng.randint(1, 15))
    ]
    return limits, hosts, busy, queue


@pytest.mark.parametrize("seed", range(40))
def test_a_pass_never_exceeds_a_limit_or_overfills_a_host(seed):
    limits, hosts, busy, queue = random_cluster(seed)
    decisions = admit(limits, queue, busy, hosts)
    assert sorted(d.session_id for d in decisions) == sorted(q.session_id for q in queue)
    sessions = {q.session_id: q for q in queue}
    new = [(sessions[d.session_id], d.dest) for d in decisions if isinstance(d, Admit)]
    out = Counter(s.source for s, _ in new) + Counter(s.source for s in busy)
    into = Counter(dest for _, dest in new) + Counter(s.dest for s in busy)
    assert len(busy) + len(new) <= limits.cluster
    assert all(n <= limits.outbound_per_host for n in out.values())
    assert all(n <= limits.inbound_per_host for n in into.values())
    rules = PlacementRules()
    facts = {h.name: h for h in hosts}
    for name, h in facts.items():
        arriving = [s for s, dest in new if dest == name]
        if not arriving:
            continue
        assert sum(s.demand.memory_mib for s in arriving) <= available_memory_mib(h) - rules.memory_margin_mib
        vcpus_after = h.vcpus_used + h.reserved_vcpus + sum(s.demand.vcpus for s in arriving)
        assert vcpus_after <= h.cpus * rules.cpu_allocation_ratio
    for session, dest in new:
        assert dest not in session.avoid and dest != session.source
        assert facts[dest].up and not facts[dest].draining and facts[dest].health == HealthState.OK


@pytest.mark.parametrize("seed", range(40))
def test_a_pass_decides_in_queue_order_and_every_wait_names_a_limit(seed):
    limits, hosts, busy, queue = random_cluster(seed)
    decisions = admit(limits, queue, busy, hosts)
    assert [d.session_id for d in decisions] == [q.session_id for q in sorted(queue, key=queue_order)]
    for d in decisions:
        if isinstance(d, Wait):
            assert d.code in ("cluster_limit", "outbound_limit", "inbound_limit", "capacity_held") and d.reason
        elif isinstance(d, Refuse):
            assert d.code == "no_destination" and d.reason.startswith("no host can take ")
    # Once the cluster is full, everything after waits for it.
    codes = [d.code if not isinstance(d, Admit) else "admit" for d in decisions]
    if "cluster_limit" in codes:
        first = codes.index("cluster_limit")
        assert set(codes[first:]) == {"cluster_limit"}


@pytest.mark.parametrize("seed", range(20))
def test_named_destinations_also_keep_to_the_limits(seed):
    limits, hosts, busy, queue = random_cluster(1000 + seed)
    rng = random.Random(seed)
    names = [h.name for h in hosts]
    queue = [
        Queued(q.session_id, q.demand, q.created_at, priority=q.priority,
               dest=rng.choice([n for n in names if n != q.source]))
        if rng.random() < 0.5 else q
        for q in queue
    ]
    decisions = admit(limits, queue, busy, hosts)
    sessions = {q.session_id: q for q in queue}
    new = [(sessions[d.session_id], d.dest) for d in decisions if isinstance(d, Admit)]
    out = Counter(s.source for s, _ in new) + Counter(s.source for s in busy)
    into = Counter(dest for _, dest in new) + Counter(s.dest for s in busy)
    assert len(busy) + len(new) <= limits.cluster
    assert max(out.values(), default=0) <= limits.outbound_per_host
    assert max(into.values(), default=0) <= limits.inbound_per_host
    for session, dest in new:
        if session.dest is not None:
            assert dest == session.dest


def test_with_the_cluster_full_every_session_waits_as_admission_would_say_without_placing_any():
    limits = Limits(cluster=2)
    held = slots(("hv1", "hv2"), ("hv3", "hv4"))
    queue = [queued(f"s{i}", source=f"hv{i % 4 + 1}") for i in range(6)]
    assert cluster_full(limits, held) and not cluster_full(limits, held[:1])
    waits = cluster_waits(limits, held, [q.session_id for q in queue])
    assert by_id(waits) == by_id(admit(limits, queue, held, [host("hv5"), host("hv6")]))
    assert {w.code for w in waits} == {"cluster_limit"}
