"""Short heartbeats: an agent sends its full report on change, on request and
every FULL_EVERY beats, a HostBeat otherwise; the coordinator believes a beat
only for the report it holds, and asks for the report when it does not."""

import msgspec

from ferry.agent.beats import Beats
from ferry.coordinator.rate_limit import RateLimit
from ferry.coordinator.registry import Registry
from ferry.proto.api import HostState
from ferry.proto.codec import encode
from ferry.proto.events import HeartbeatRefused, HostReturned
from ferry.proto.host import Capacity, HostBeat, HostStatus, StatusDecoder, VmInfo, report_digest


def status(seq: int = 1, vms: int = 2, boot: str = "b1", free: int = 40_000) -> HostStatus:
    full = HostStatus(
        host="hv1", seq=seq, boot_id=boot, sent_at=100.0 + seq, interval=2.0,
        capacity=Capacity(cpus=8, memory_total_mib=65536, memory_free_mib=free),
        vms=[VmInfo(name=f"vm{n}", vcpus=1, memory_mib=1024) for n in range(vms)],
    )
    return msgspec.structs.replace(full, digest=report_digest(full))


def beat_of(full: HostStatus, seq: int) -> HostBeat:
    return HostBeat(host=full.host, seq=seq, boot_id=full.boot_id, sent_at=100.0 + seq, interval=2.0, digest=full.digest)


def test_the_digest_follows_the_content_not_the_clock():
    assert report_digest(status(seq=1)) == report_digest(status(seq=9))
    assert report_digest(status(vms=2)) != report_digest(status(vms=3))
    # Free memory counts to the GiB: drift within one does not force a full report.
    assert report_digest(status(free=40_000)) == report_digest(status(free=40_100))
    assert report_digest(status(free=40_000)) != report_digest(status(free=42_000))


def test_an_agent_sends_full_reports_until_a_coordinator_asks_then_beats_between_them():
    beats = Beats(full_every=4)
    assert all(isinstance(beats.next(status(seq)), HostStatus) for seq in range(1, 4))
    beats.ask(short_beats=True)
    sent = [beats.next(status(seq)) for seq in range(4, 13)]
    assert [type(m).__name__ for m in sent] == ["HostStatus", *["HostBeat"] * 3, "HostStatus", *["HostBeat"] * 3, "HostStatus"]
    assert all(m.digest == status().digest for m in sent)


def test_a_change_or_a_request_sends_the_full_report_at_once():
    beats = Beats(full_every=30)
    beats.ask(short_beats=True)
    assert isinstance(beats.next(status(1)), HostStatus)
    assert isinstance(beats.next(status(2)), HostBeat)
    assert isinstance(beats.next(status(3, vms=3)), HostStatus)  # a VM arrived
    assert isinstance(beats.next(status(4, vms=3)), HostBeat)
    beats.ask(short_beats=True)
    assert isinstance(beats.next(status(5, vms=3)), HostStatus)


def test_an_old_coordinator_never_gets_a_beat():
    beats = Beats(full_every=3)
    beats.ask(short_beats=False)
    assert all(isinstance(beats.next(status(seq)), HostStatus) for seq in range(1, 10))


def test_a_beat_for_the_report_held_keeps_the_host_up_and_moves_its_sequence():
    registry = Registry()
    full = status(seq=1)
    registry.observe(full, now=0.0)
    assert registry.beat(beat_of(full, 2), now=2.0) == (True, [])
    record = registry.get("hv1")
    assert record.last_seen == 2.0 and record.status.seq == 2 and record.status.vms == full.vms
    assert registry.sweep(now=7.0) == []  # 5 s after the beat, under 3 x 2 s


def test_a_beat_naming_another_report_or_boot_or_host_is_not_believed():
    registry = Registry()
    full = status(seq=1)
    registry.observe(full, now=0.0)
    other = status(vms=5)
    assert registry.beat(beat_of(other, 2), now=2.0) == (False, [])
    assert registry.beat(msgspec.structs.replace(beat_of(full, 2), boot_id="b2"), now=2.0) == (False, [])
    assert registry.beat(msgspec.structs.replace(beat_of(full, 2), host="hv9"), now=2.0) == (False, [])
    assert registry.get("hv1").last_seen == 0.0 and registry.get("hv9") is None


def test_a_beat_is_held_to_the_same_rules_as_a_report():
    registry = Registry()
    full = status(seq=10)
    registry.observe(full, now=0.0)
    assert registry.beat(beat_of(full, 5), now=1.0) == (True, [])  # late
    assert registry.get("hv1").status.seq == 10
    matched, events = registry.beat(beat_of(full, 10_000), now=2.0)
    assert matched and [type(e) for e in events] == [HeartbeatRefused]
    assert registry.get("hv1").last_seen == 0.0


def test_a_lost_host_that_beats_again_returns():
    registry = Registry()
    full = status(seq=1)
    registry.observe(full, now=0.0)
    registry.sweep(now=10.0)
    assert registry.get("hv1").state == HostState.LOST
    matched, events = registry.beat(beat_of(full, 6), now=11.0)
    assert matched and [type(e) for e in events] == [HostReturned]
    assert registry.get("hv1").state == HostState.UP


def test_the_decoder_reads_both_kinds():
    decoder = StatusDecoder()
    full = status()
    assert decoder.decode(encode(full)) == (full, [])
    beat = beat_of(full, 2)
    assert decoder.decode(encode(beat)) == (beat, [])
    assert len(encode(beat)) < 200 < len(encode(full))


def test_asks_are_limited_per_host_in_bounded_memory():
    asks = RateLimit(5.0, capacity=3)
    assert asks.due("hv1", 0.0) and not asks.due("hv1", 4.9) and asks.due("hv1", 5.0)
    for n in range(100):
        asks.due(f"forged{n}", 6.0)
    assert len(asks._last) == 3
    assert asks.due("hv1", 6.0)  # forgotten by then: asked again
