import pytest

from ferry.coordinator.health_watch import HealthWatch, failing_checks
from ferry.proto.events import (
    EvacuationCalledOff,
    EvacuationPending,
    PlacementsResumed,
    PlacementsStopped,
)
from ferry.proto.host import HealthCheck, HealthState

OK, WARNING, CRITICAL = HealthState.OK, HealthState.WARNING, HealthState.CRITICAL
DISK_FULL = [HealthCheck("disk", CRITICAL, "98% full"), HealthCheck("memory", OK)]
DISK_LOW = [HealthCheck("disk", WARNING, "91% full")]


def watch(debounce=30.0, enabled=True) -> HealthWatch:
    return HealthWatch(debounce, enabled=enabled)


def critical(w: HealthWatch, now: float, host="hv1"):
    return w.observe(host, CRITICAL, DISK_FULL, now)


EVACUATE_HV1 = [("hv1", "health critical for 30 s: disk: 98% full")]


# failing_checks


@pytest.mark.parametrize(
    "checks, state, text",
    [
        (DISK_FULL, CRITICAL, "disk: 98% full"),
        ([HealthCheck("disk", CRITICAL, "98% full"), HealthCheck("nic", CRITICAL)], CRITICAL, "disk: 98% full; nic"),
        ([HealthCheck("disk", WARNING, "91% full"), HealthCheck("nic", CRITICAL, "down")], CRITICAL, "nic: down"),
        ([HealthCheck("disk", WARNING, "91% full"), HealthCheck("nic", CRITICAL, "down")], WARNING, "disk: 91% full"),
        ([], WARNING, "health warning"),
        ([HealthCheck("disk", OK)], CRITICAL, "health critical"),
    ],
)
def test_failing_checks_name_the_checks_in_the_reported_state(checks, state, text):
    assert failing_checks(checks, state) == text


# Placements


def test_a_healthy_host_says_nothing():
    w = watch()
    for now in (0.0, 10.0, 100.0):
        verdict = w.observe("hv1", OK, [], now)
        assert verdict.events == [] and verdict.evacuate == []


def test_a_warning_stops_placements_once():
    w = watch()
    first = w.observe("hv1", WARNING, DISK_LOW, 0.0)
    assert first.events == [PlacementsStopped(host="hv1", health=WARNING, reason="disk: 91% full")]
    assert first.evacuate == []
    for now in (5.0, 100.0, 1000.0):
        again = w.observe("hv1", WARNING, DISK_LOW, now)
        assert again.events == [] and again.evacuate == []


def test_a_host_first_seen_unhealthy_stops_placements():
    verdict = watch().observe("hv9", CRITICAL, DISK_FULL, 0.0)
    assert verdict.events[0] == PlacementsStopped(host="hv9", health=CRITICAL, reason="disk: 98% full")


def test_warning_then_critical_does_not_stop_placements_twice():
    w = watch()
    w.observe("hv1", WARNING, DISK_LOW, 0.0)
    verdict = critical(w, 5.0)
    assert verdict.events == [EvacuationPending(host="hv1", reason="disk: 98% full", due_at=35.0)]


def test_recovery_resumes_placements_once():
    w = watch()
    w.observe("hv1", WARNING, DISK_LOW, 0.0)
    assert w.observe("hv1", OK, [], 5.0).events == [PlacementsResumed(host="hv1", reason="hv1 is healthy again")]
    assert w.observe("hv1", OK, [], 6.0).events == []


# Evacuation


def test_critical_announces_a_pending_evacuation_with_its_due_time():
    verdict = critical(watch(), 100.0)
    assert verdict.events == [
        PlacementsStopped(host="hv1", health=CRITICAL, reason="disk: 98% full"),
        EvacuationPending(host="hv1", reason="disk: 98% full", due_at=130.0),
    ]
    assert verdict.evacuate == []


@pytest.mark.parametrize("later, due", [(1.0, False), (29.9, False), (30.0, True), (31.0, True), (500.0, True)])
def test_critical_held_for_the_debounce_evacuates_on_the_next_report(later, due):
    w = watch()
    critical(w, 0.0)
    verdict = critical(w, later)
    assert verdict.evacuate == (EVACUATE_HV1 if due else [])
    assert verdict.events == []


@pytest.mark.parametrize("later, due", [(29.9, False), (30.0, True), (45.0, True)])
def test_critical_held_for_the_debounce_evacuates_on_a_tick(later, due):
    w = watch()
    critical(w, 0.0)
    assert w.tick(later).evacuate == (EVACUATE_HV1 if due else [])


def test_a_host_is_evacuated_once_however_long_it_stays_critical():
    w = watch()
    critical(w, 0.0)
    assert w.tick(30.0).evacuate == EVACUATE_HV1
    for now in (31.0, 60.0, 90.0, 1000.0):
        assert critical(w, now).evacuate == [] and critical(w, now).events == []
        assert w.tick(now).evacuate == []


def test_the_evacuation_reason_is_the_checks_that_turned_it_critical():
    w = watch(debounce=12.5)
    w.observe("hv1", CRITICAL, [HealthCheck("nic", CRITICAL, "link down")], 0.0)
    w.observe("hv1", CRITICAL, DISK_FULL, 5.0)
    assert w.tick(12.5).evacuate == [("hv1", "health critical for 12.5 s: nic: link down")]


def test_a_zero_debounce_evacuates_on_the_first_critical_report():
    verdict = watch(debounce=0.0).observe("hv1", CRITICAL, DISK_FULL, 7.0)
    assert verdict.evacuate == [("hv1", "health critical for 0 s: disk: 98% full")]


@pytest.mark.parametrize(
    "flap, events",
    [
        (OK, [PlacementsResumed(host="hv1", reason="hv1 is healthy again"),
              EvacuationCalledOff(host="hv1", reason="hv1 is ok again before the debounce ended")]),
        (WARNING, [EvacuationCalledOff(host="hv1", reason="hv1 is warning again before the debounce ended")]),
    ],
)
def test_a_flap_within_the_debounce_calls_the_evacuation_off(flap, events):
    w = watch()
    critical(w, 0.0)
    verdict = w.observe("hv1", flap, [], 10.0)
    assert verdict.events == events and verdict.evacuate == []
    assert w.tick(30.0).evacuate == [] and w.tick(1000.0).evacuate == []


def test_after_a_flap_the_debounce_starts_again_from_the_next_critical_report():
    w = watch()
    critical(w, 0.0)
    w.observe("hv1", OK, [], 10.0)
    verdict = critical(w, 20.0)
    assert EvacuationPending(host="hv1", reason="disk: 98% full", due_at=50.0) in verdict.events
    assert w.tick(30.0).evacuate == [] and w.tick(49.0).evacuate == []
    assert w.tick(50.0).evacuate == EVACUATE_HV1


def test_recovery_after_an_evacuation_does_not_undrain_and_re_arms():
    w = watch()
    critical(w, 0.0)
    assert w.tick(30.0).evacuate == EVACUATE_HV1
    recovered = w.observe("hv1", OK, [], 40.0)
    # Placements resume; nothing is called off (the evacuation already happened) and nothing is undrained.
    assert recovered.events == [PlacementsResumed(host="hv1", reason="hv1 is healthy again")]
    assert recovered.evacuate == []
    again = critical(w, 100.0)
    assert EvacuationPending(host="hv1", reason="disk: 98% full", due_at=130.0) in again.events
    assert w.tick(129.0).evacuate == []
    assert w.tick(130.0).evacuate == EVACUATE_HV1


def test_a_warning_between_two_critical_spells_does_not_re_arm():
    w = watch()
    critical(w, 0.0)
    assert w.tick(30.0).evacuate == EVACUATE_HV1
    assert w.observe("hv1", WARNING, DISK_LOW, 40.0).events == []
    assert critical(w, 50.0).events == []
    assert w.tick(80.0).evacuate == [] and w.tick(1000.0).evacuate == []
    w.observe("hv1", OK, [], 1001.0)
    critical(w, 1002.0)
    assert w.tick(1032.0).evacuate == EVACUATE_HV1


def test_hosts_are_watched_independently():
    w = watch()
    critical(w, 0.0, "hv1")
    critical(w, 10.0, "hv2")
    w.observe("hv3", WARNING, DISK_LOW, 0.0)
    assert w.tick(30.0).evacuate == EVACUATE_HV1
    w.observe("hv2", OK, [], 35.0)
    assert w.tick(40.0).evacuate == [] and w.tick(100.0).evacuate == []


def test_several_hosts_due_at_once_are_all_evacuated():
    w = watch()
    critical(w, 0.0, "hv1")
    critical(w, 5.0, "hv2")
    assert sorted(host for host, _ in w.tick(60.0).evacuate) == ["hv1", "hv2"]


# A lost host


def test_losing_a_host_calls_its_pending_evacuation_off():
    w = watch()
    critical(w, 0.0)
    verdict = w.lost("hv1")
    assert verdict.events == [
        EvacuationCalledOff(host="hv1", reason="hv1 is lost: its VMs cannot be live-migrated, so it is not evacuated")
    ]
    assert verdict.evacuate == []
    assert w.tick(30.0).evacuate == [] and w.tick(1000.0).evacuate == []


@pytest.mark.parametrize("history", [[], [OK], [WARNING], [CRITICAL, OK]])
def test_losing_a_host_with_nothing_pending_says_nothing(history):
    w = watch()
    for n, state in enumerate(history):
        w.observe("hv1", state, DISK_FULL, float(n))
    verdict = w.lost("hv1")
    assert verdict.events == [] and verdict.evacuate == []


def test_losing_a_host_after_its_evacuation_says_nothing():
    w = watch()
    critical(w, 0.0)
    w.tick(30.0)
    assert w.lost("hv1").events == []


def test_a_lost_host_that_returns_still_critical_is_pending_again():
    w = watch()
    critical(w, 0.0)
    w.lost("hv1")
    verdict = critical(w, 100.0)
    assert verdict.events == [EvacuationPending(host="hv1", reason="disk: 98% full", due_at=130.0)]
    assert w.tick(130.0).evacuate == EVACUATE_HV1


# Disabled


def test_a_disabled_watch_never_evacuates_but_still_stops_placements():
    w = watch(enabled=False)
    first = critical(w, 0.0)
    assert first.events == [PlacementsStopped(host="hv1", health=CRITICAL, reason="disk: 98% full")]
    for now in (30.0, 60.0, 10_000.0):
        assert critical(w, now).evacuate == [] and w.tick(now).evacuate == []
    assert w.observe("hv1", OK, [], 10_001.0).events == [PlacementsResumed(host="hv1", reason="hv1 is healthy again")]


def test_a_disabled_watch_announces_and_calls_off_nothing():
    w = watch(enabled=False)
    critical(w, 0.0)
    assert w.observe("hv1", WARNING, DISK_LOW, 5.0).events == []
    critical(w, 6.0)
    assert w.lost("hv1").events == []
