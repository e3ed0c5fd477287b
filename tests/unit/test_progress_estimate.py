"""Progress that never runs backwards (coordinator/progress_estimate.py): on the
streams a migration sends (passes over dirtied memory make libvirt's own
remaining bytes grow again), on oscillating and adversarial ones, percent never
falls, stays within 0..100, and reaches 100 only when the migration completed."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.agent.hypervisor.simulated import SimulatedHypervisor
from ferry.agent.progress import percent_done, progress_from_stats
from ferry.coordinator.progress_estimate import BEFORE_THE_END, DrainProgress, DrainVm, ProgressEstimator
from ferry.proto.progress import Progress

MIB = 1024 * 1024


def passes(memory: int, rate: int, dirty: int, seconds: int) -> list[Progress]:
    """A pre-copy as QEMU reports it, a sample a second: within a pass the remaining bytes
    fall; at the next pass they jump to what the guest dirtied meanwhile."""
    samples, sent, pass_left, dirtied, iteration = [], 0, memory, 0, 1
    for second in range(1, seconds + 1):
        step = min(rate, pass_left)
        sent, pass_left, dirtied = sent + step, pass_left - step, min(memory, dirtied + dirty)
        if pass_left == 0 and dirtied:
            iteration, pass_left, dirtied = iteration + 1, dirtied, 0
        samples.append(Progress(elapsed_ms=1000 * second, data_total=memory, data_processed=sent,
                                data_remaining=pass_left, bandwidth_bps=rate, dirty_rate_bps=dirty, iteration=iteration))
        if pass_left == 0:
            break
    return samples


def percents(samples: list[Progress], expected: int = 0) -> list[float]:
    estimator = ProgressEstimator(expected)
    return [estimator.update(s).percent for s in samples]


def never_back(values: list[float]) -> bool:
    return all(b >= a for a, b in zip(values, values[1:]))


def test_libvirts_own_percent_runs_backwards_where_the_estimate_does_not():
    stream = passes(256 * MIB, 32 * MIB, 8 * MIB, 20)
    raw = [percent_done(s) for s in stream]
    assert not never_back(raw), "the stream is one that fools the naive percent"
    estimated = percents(stream)
    assert never_back(estimated) and 0 < estimated[0] and estimated[-1] <= BEFORE_THE_END


def test_the_expected_total_counts_what_the_guest_dirties_on_the_way():
    estimate = ProgressEstimator().update(Progress(data_processed=0 + MIB, data_remaining=99 * MIB,
                                                   bandwidth_bps=40 * MIB, dirty_rate_bps=20 * MIB))
    # 99 MiB left at half the rate dirtied again: 198 MiB still to send, about 5 s at 40 MiB/s.
    assert estimate.total_bytes == 199 * MIB and estimate.eta_seconds == 5.0
    assert estimate.eta_low <= estimate.eta_seconds <= estimate.eta_high


def test_a_guest_that_dirties_as_fast_as_the_link_has_no_total_and_no_upper_eta():
    estimator = ProgressEstimator()
    first = estimator.update(Progress(data_processed=10 * MIB, data_remaining=50 * MIB, bandwidth_bps=MIB,
                                      dirty_rate_bps=MIB))
    assert (first.total_bytes, first.eta_seconds, first.eta_high) == (0, None, None) and first.eta_low == 50.0
    assert estimator.completed().percent == 100.0


def test_a_simulated_migration_streams_percent_that_never_falls():
    # The simulated hypervisor's job statistics, read as the source agent reads libvirt's.
    from ferry.agent.config import SimulatedHost, SimulatedVm

    hv = SimulatedHypervisor("hv1", SimulatedHost(vms=[SimulatedVm(name="busy", memory_mib=256, dirty_mib_per_s=64)],
                                                  migration_mib_per_s=128))
    stream = []
    for _ in range(40):
        hv._jobs["busy"] = hv._jobs.get("busy") or _start(hv)
        hv._step(hv._jobs["busy"], 64 * MIB)
        stream.append(progress_from_stats(_stats(hv)))
    assert never_back(percents(stream))


def _start(hv):
    from ferry.agent.hypervisor.simulated import _Job

    memory = 256 * MIB
    return _Job(started=0.0, total=memory, remaining=memory, pass_left=memory, bps=128 * MIB)


def _stats(hv):
    job = hv._jobs["busy"]
    return {"data_processed": job.processed, "data_remaining": job.remaining, "memory_bps": job.bps or 128 * MIB,
            "memory_dirty_rate": 64 * MIB // 4096, "memory_iteration": job.iteration}


sample = st.builds(
    Progress,
    data_processed=st.integers(0, 1 << 36),
    data_remaining=st.integers(0, 1 << 36),
    bandwidth_bps=st.integers(0, 1 << 31),
    dirty_rate_bps=st.integers(0, 1 << 31),
    iteration=st.integers(0, 100),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(sample, min_size=1, max_size=60), st.integers(0, 1 << 36))
def test_on_any_stream_percent_never_falls_stays_in_range_and_eta_is_ordered(stream, expected):
    estimator = ProgressEstimator(expected)
    seen = []
    for s in stream:
        estimate = estimator.update(s)
        seen.append(estimate.percent)
        assert 0.0 <= estimate.percent <= BEFORE_THE_END
        low, middle, high = estimate.eta_low, estimate.eta_seconds, estimate.eta_high
        if middle is not None:
            assert low is not None and low <= middle and (high is None or middle <= high)
    assert never_back(seen)
    assert estimator.completed().percent == 100.0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4096), st.integers(1, 400), st.floats(0.0, 0.99), st.integers(5, 120),
       st.integers(1, 10))
def test_on_oscillating_passes_percent_never_falls(memory_mib, rate_mib, dirty_share, seconds, wobble):
    stream = passes(memory_mib * MIB, rate_mib * MIB, int(dirty_share * rate_mib * MIB), seconds)
    # Rates that swing sample to sample, as a shared link's do.
    swung = [Progress(**{**{f: getattr(s, f) for f in s.__struct_fields__},
                         "bandwidth_bps": s.bandwidth_bps * (1 + (i % wobble)) // wobble or 1})
             for i, s in enumerate(stream)]
    assert never_back(percents(swung))


drain_vm = st.builds(
    DrainVm,
    final=st.booleans(),
    memory_bytes=st.integers(0, 1 << 34),
    sent=st.integers(0, 1 << 35),
    expected=st.integers(0, 1 << 35),
    rate_bps=st.integers(0, 1 << 30),
    moved=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(drain_vm, min_size=1, max_size=8), min_size=1, max_size=30))
def test_a_drains_percent_never_falls_whatever_its_vms_report(rounds):
    progress = DrainProgress()
    seen = [progress.update(vms).percent for vms in rounds]
    assert never_back(seen) and all(0 <= p <= 100 for p in seen)


def test_a_drain_counts_vms_done_data_moved_and_an_eta_at_the_rate_now():
    gib = 1 << 30
    progress = DrainProgress()
    first = progress.update([
        DrainVm(final=True, memory_bytes=gib, sent=gib + gib // 2, moved=True),  # sent 1.5x its memory
        DrainVm(final=False, memory_bytes=gib, sent=gib // 2, expected=gib + gib // 2, rate_bps=gib // 4),
        DrainVm(final=False, memory_bytes=gib),
    ])
    # 1.5 + 0.5 sent of 1.5 + 1.5 + 1.5 expected; 2.5 GiB left at 0.25 GiB/s.
    assert (first.done, first.total, first.moved_bytes) == (1, 3, 2 * gib)
    assert first.percent == pytest.approx(44.44, abs=0.01) and first.eta_seconds == 10.0
    last = progress.update([DrainVm(final=True, memory_bytes=gib, sent=gib, moved=True)] * 3)
    assert (last.done, last.percent, last.eta_seconds) == (3, 100.0, None)
