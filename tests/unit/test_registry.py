import msgspec
import pytest

from ferry.coordinator.registry import Registry
from ferry.proto.api import HostState
from ferry.proto.events import HeartbeatRefused, HostAppeared, HostLost, HostReturned
from ferry.proto.host import Capacity, HostStatus


def status(host="hv1", seq=1, boot="b1", interval=2.0, vcpus_used=0) -> HostStatus:
    return HostStatus(
        host=host,
        seq=seq,
        boot_id=boot,
        sent_at=0.0,
        interval=interval,
        capacity=Capacity(cpus=8, memory_total_mib=1024, memory_free_mib=512, vcpus_used=vcpus_used),
    )


def test_first_heartbeat_makes_host_appear():
    reg = Registry()
    assert reg.observe(status(), now=10.0) == [HostAppeared(host="hv1")]
    assert reg.views(now=10.5)[0].state == HostState.UP
    assert reg.views(now=10.5)[0].last_seen_age == 0.5


@pytest.mark.parametrize(
    "interval, factor, fixed, silent, lost",
    [
        (2.0, 3.0, None, 5.9, False),
        (2.0, 3.0, None, 6.1, True),
        (0.5, 3.0, None, 1.6, True),
        (2.0, 3.0, 10.0, 9.9, False),
        (2.0, 3.0, 10.0, 10.1, True),
        (2.0, 5.0, None, 9.0, False),
    ],
)
def test_silent_host_is_lost_after_its_timeout(interval, factor, fixed, silent, lost):
    reg = Registry(timeout_factor=factor, timeout=fixed)
    reg.observe(status(interval=interval), now=100.0)
    events = reg.sweep(now=100.0 + silent)
    assert [type(e) for e in events] == ([HostLost] if lost else [])
    assert reg.get("hv1").state == (HostState.LOST if lost else HostState.UP)


def test_lost_is_reported_once_with_a_reason():
    reg = Registry()
    reg.observe(status(), now=0.0)
    (event,) = reg.sweep(now=7.0)
    assert event.host == "hv1" and event.silent_for == 7.0
    assert "no heartbeat for 7.0 s (timeout 6.0 s)" == event.reason
    assert reg.sweep(now=8.0) == []


def test_lost_host_returns_on_next_heartbeat():
    reg = Registry()
    reg.observe(status(seq=1), now=0.0)
    reg.sweep(now=10.0)
    assert reg.observe(status(seq=2), now=11.0) == [HostReturned(host="hv1")]
    assert reg.get("hv1").state == HostState.UP


def test_stale_heartbeat_from_same_boot_is_ignored():
    reg = Registry()
    reg.observe(status(seq=5, vcpus_used=4), now=0.0)
    assert reg.observe(status(seq=3, vcpus_used=1), now=1.0) == []
    assert reg.get("hv1").status.capacity.vcpus_used == 4
    assert reg.get("hv1").last_seen == 0.0


def test_restarted_agent_with_lower_seq_is_accepted():
    reg = Registry()
    reg.observe(status(seq=50, boot="old"), now=0.0)
    reg.observe(status(seq=1, boot="new", vcpus_used=2), now=1.0)
    assert reg.get("hv1").status.boot_id == "new"
    assert reg.get("hv1").last_seen == 1.0


def test_restart_clocks_spares_up_hosts_but_not_lost_ones():
    reg = Registry()
    reg.observe(status("hv1"), now=0.0)
    reg.observe(status("hv2"), now=0.0)
    reg.sweep(now=7.0)  # both lost
    reg.observe(status("hv1", seq=2), now=8.0)  # hv1 back
    reg.restart_clocks(now=20.0)
    assert reg.sweep(now=25.0) == []
    assert reg.get("hv1").state == HostState.UP
    assert reg.get("hv2").state == HostState.LOST


def test_views_are_sorted_and_carry_status():
    reg = Registry()
    for name in ["hv3", "hv1", "hv2"]:
        reg.observe(msgspec.structs.replace(status(name), cpu_model="Skylake"), now=0.0)
    views = reg.views(now=1.0)
    assert [v.host for v in views] == ["hv1", "hv2", "hv3"]
    assert all(v.cpu_model == "Skylake" and v.capacity.cpus == 8 for v in views)


def test_grace_after_reconnect_holds_off_lost_then_lets_it_through():
    reg = Registry()
    reg.observe(status("hv1"), now=0.0)
    reg.restart_clocks(now=10.0, grace=10.0)
    assert reg.sweep(now=17.0) == []  # past the 6 s timeout, inside the grace
    assert reg.sweep(now=19.9) == []
    assert [type(e) for e in reg.sweep(now=20.1)] == [HostLost]


def test_a_forged_sequence_jump_is_refused_once_and_cannot_freeze_the_host():
    reg = Registry()
    reg.observe(status(seq=1, vcpus_used=2), now=0.0)
    forged = status(seq=2**62, vcpus_used=0)
    (event,) = reg.observe(forged, now=1.0)
    assert isinstance(event, HeartbeatRefused) and "jumps" in event.reason
    assert not reg.believed(forged)
    assert reg.observe(status(seq=2**62 + 1), now=1.5) == [], "said once, not once per heartbeat"
    # The genuine heartbeats go on counting and are believed.
    assert reg.observe(status(seq=2, vcpus_used=2), now=2.0) == []
    assert reg.get("hv1").status.seq == 2 and reg.get("hv1").refused == ""


def test_a_sequence_may_run_ahead_as_far_as_the_time_allows():
    reg = Registry()
    reg.observe(status(seq=1), now=0.0)
    # 60 s of silence at 2 s: 30 heartbeats buffered across a reconnect are fine.
    assert reg.observe(status(seq=31), now=60.0) == []
    assert reg.get("hv1").status.seq == 31


@pytest.mark.parametrize("interval", [0.0, 0.01, 10_000.0])
def test_an_impossible_interval_is_refused_and_cannot_mark_the_host_lost(interval):
    reg = Registry()
    reg.observe(status(seq=1), now=0.0)
    (event,) = reg.observe(status(seq=2, interval=interval), now=1.0)
    assert isinstance(event, HeartbeatRefused) and "interval" in event.reason
    assert reg.sweep(now=3.0) == [], "the host keeps its own announced timeout"
    assert reg.views(3.0)[0].state == HostState.UP


def test_a_new_host_with_an_impossible_interval_is_not_kept():
    reg = Registry()
    assert reg.observe(status(host="rogue", interval=0.0), now=0.0) == []
    assert reg.get("rogue") is None


def test_a_report_that_repeats_itself_keeps_the_view_object():
    """What caches by view (placement's facts and index) does nothing for it."""
    reg = Registry()
    reg.observe(status(seq=1), now=0.0)
    (first,) = reg.current_views()
    reg.observe(status(seq=2), now=2.0)
    assert reg.current_views()[0] is first
    reg.observe(status(seq=3, vcpus_used=4), now=4.0)
    (changed,) = reg.current_views()
    assert changed is not first and changed.capacity.vcpus_used == 4
    reg.sweep(now=20.0)
    assert reg.current_views()[0].state == HostState.LOST


def test_the_vm_index_follows_reports_that_move_a_vm():
    from ferry.proto.host import VmInfo, VmState

    def with_vms(host, seq, *names):
        return msgspec.structs.replace(status(host=host, seq=seq), vms=[VmInfo(name=n, state=VmState.RUNNING) for n in names])

    reg = Registry()
    reg.observe(with_vms("hv1", 1, "a", "b"), now=0.0)
    reg.observe(with_vms("hv2", 1, "b"), now=0.0)
    assert reg.reporting("b") == ["hv1", "hv2"]
    reg.observe(with_vms("hv1", 2, "a"), now=1.0)
    assert reg.reporting("b") == ["hv2"] and reg.reporting("a") == ["hv1"]
    reg.observe(with_vms("hv2", 2), now=1.0)
    assert reg.reporting("b") == [] and reg.current_views()[0].host == "hv1"
