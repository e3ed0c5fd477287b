"""The convergence policies, told as what they do to synthetic migrations.

Each guest below is a stream of job-stats samples, one a second, as
agent/progress.py makes them from libvirt. `run` feeds a stream to a Steering
and `timeline` shows the actions as (kind, elapsed seconds, value).

Data left is a sawtooth, as QEMU reports it: a pass starts with what the guest
dirtied during the pass before, copies it down towards zero, and when QEMU
syncs the dirty bitmap the next pass starts high again. After the first pass,
progress is a pass smaller than every pass before it.
"""

from collections.abc import Callable, Iterable, Iterator

import msgspec
import pytest

from ferry.agent.steering import Steering
from ferry.proto.convergence import POLICIES, ActionKind, Policy, PolicyAction
from ferry.proto.progress import Progress

MIB = 1 << 20
GIB = 1 << 30
T0 = 5_000.0  # the monitor's clock when the job starts; the engine only uses differences

SET = ActionKind.SET_DOWNTIME
THROTTLE = ActionKind.AUTO_CONVERGE_ENGAGED
POSTCOPY = ActionKind.POSTCOPY
PAUSE = ActionKind.PAUSE
ABORT = ActionKind.ABORT

Stream = Iterator[tuple[float, Progress]]


def precopy(
    working_set: Callable[[int], int],
    *,
    memory_mib: int = 1024,
    bandwidth_mib: int = 128,
    dirty_mib: int = 160,
    passes: int | None = None,
    link_down_at: int | None = None,
) -> Stream:
    """QEMU's pre-copy, sampled at the end of every second.

    Pass 1 (libvirt's iteration 1) copies all `memory_mib` MiB. When a pass has
    copied everything, QEMU syncs the dirty bitmap and pass n begins with what
    the guest dirtied meanwhile: `dirty_mib` MiB a second for as long as the
    pass before took, but no more than its working set, `working_set(n)` MiB.
    Within a pass data left falls by `bandwidth_mib` MiB a second, down to the
    last second's copying, then jumps back up. Here a pass ends on a whole
    second, so the first sample of each pass sees all of it.

    With `passes`, the job completes after that many (the caller stops
    sampling). From `link_down_at` seconds on the network moves nothing: every
    sample repeats the one before, with no bandwidth.
    """
    elapsed = 0
    processed = 0
    iteration, left, took = 1, memory_mib, 0  # took: seconds the current pass has taken
    last: Progress | None = None
    while True:
        elapsed += 1
        if link_down_at is not None and elapsed >= link_down_at and last is not None:
            yield T0 + elapsed, msgspec.structs.replace(last, elapsed_ms=elapsed * 1000, bandwidth_bps=0)
            continue
        copied = min(bandwidth_mib, left)
        left, processed, took = left - copied, processed + copied, took + 1
        if left == 0:  # the pass is done: QEMU syncs the dirty bitmap
            if iteration == passes:
                return
            iteration += 1
            left, took = min(working_set(iteration), dirty_mib * took), 0
        last = Progress(
            elapsed_ms=elapsed * 1000,
            data_total=memory_mib * MIB,
            data_processed=processed * MIB,
            data_remaining=left * MIB,
            bandwidth_bps=bandwidth_mib * MIB,
            dirty_rate_bps=dirty_mib * MIB,
            iteration=iteration,
        )
        yield T0 + elapsed, last


def quiet_guest() -> Stream:
    """Dirties 16 MiB/s: pass 2 copies the 128 MiB dirtied during the 8 s of
    pass 1 (seconds 1-8), pass 3 the 16 MiB dirtied during pass 2's one second;
    that fits in the max downtime and the job completes."""
    return precopy(lambda n: 1024, dirty_mib=16, passes=3)


def busy_guest(*, new_low_every: int | None = None, working_set_mib: int = 640, **kwargs) -> Stream:
    """Rewrites its 640 MiB working set faster than it is copied (160 MiB/s
    against 128 MiB/s), for ever.

    Pass 1 copies 1 GiB in 8 s; every later pass finds all 640 MiB dirty again
    and copies it in 5 s (data left 640, 512, 384, 256, 128 MiB), so iteration
    n begins at 5n - 2 s. With `new_low_every`, the working set shrinks by 1 MiB
    every `new_low_every` passes (the guest gains a little now and then): passes
    2, 2 + new_low_every, ... are each smaller than every pass before them.
    """

    def working_set(n: int) -> int:
        return working_set_mib - ((n - 2) // new_low_every if new_low_every else 0)

    return precopy(working_set, **kwargs)


def sampled(
    rows: Iterable[tuple[float, int]], *, first_ms: int, every_ms: int, memory_mib: int = 256, bandwidth_mib: int = 16
) -> Stream:
    """Samples of (MiB left, iteration), the first at `first_ms` into the job and
    then every `every_ms`, with all of the link's `bandwidth_mib` MiB/s used."""
    for i, (left_mib, iteration) in enumerate(rows):
        elapsed_ms = first_ms + i * every_ms
        sample = Progress(
            elapsed_ms=elapsed_ms,
            data_total=memory_mib * MIB,
            data_processed=bandwidth_mib * MIB * elapsed_ms // 1000,
            data_remaining=round(left_mib * MIB),
            bandwidth_bps=bandwidth_mib * MIB,
            iteration=iteration,
        )
        yield T0 + elapsed_ms / 1000, sample


def run(
    steering: Steering, stream: Stream, *, until_s: int, throttle: Callable[[int], int] = lambda t: 0
) -> list[PolicyAction]:
    actions: list[PolicyAction] = []
    for now, sample in stream:
        t = sample.elapsed_ms // 1000
        if t > until_s:
            break
        actions += steering.observe(sample, now, throttle_percent=throttle(t))
    return actions


def timeline(actions: list[PolicyAction]) -> list[tuple[ActionKind, int, int]]:
    return [(a.kind, a.sample.elapsed_ms // 1000, a.value) for a in actions]


def steering(
    policy: str | Policy = "default", *, max_downtime_ms: int = 300, allow_postcopy: bool = False, **kw
) -> Steering:
    if isinstance(policy, str):
        policy = POLICIES[policy]
    return Steering(policy, max_downtime_ms=max_downtime_ms, allow_postcopy=allow_postcopy, **kw)


# The default policy: "post-copy after 5 iterations if the session allows it".
DEFAULT_POSTCOPY = POLICIES["default"]


# Max downtime 50 -> 300 ms in five steps, one per iteration from the second on
# (busy_guest: iterations 2..6 begin at 8, 13, 18, 23 and 28 s).
RAMP = [(SET, 8, 100), (SET, 13, 150), (SET, 18, 200), (SET, 23, 250), (SET, 28, 300)]


def test_the_named_policies_are_these_four():
    assert sorted(POLICIES) == ["default", "gentle", "insist", "plain"]


def test_the_default_policy_postcopies_after_5_iterations():
    assert POLICIES["default"].postcopy_after_iterations == 5


# -- the scenarios of issue 6 ---------------------------------------------------


def test_a_converging_guest_only_gets_downtime_steps():
    # Iteration 2 at 8 s, iteration 3 at 9 s, then the job completes.
    s = steering()
    actions = run(s, quiet_guest(), until_s=1000)
    assert timeline(actions) == [(SET, 8, 100), (SET, 9, 150)]
    assert actions[0].reason == "iteration 2: max downtime 50 -> 100 ms (step 1 of 5)"
    assert actions[0].at == T0 + 8
    assert actions[0].sample.iteration == 2
    assert not s.finished


def test_an_oscillating_guest_that_reaches_new_lows_is_not_stalled_but_times_out():
    # A pass smaller than all before it every third pass (15 s) stays within the
    # 30 s without progress; 1 GiB at 120 s per GiB ends it after 120 s.
    s = steering()
    actions = run(s, busy_guest(new_low_every=3), until_s=1000)
    assert timeline(actions) == [*RAMP, (ABORT, 121, 0)]
    assert actions[-1].reason == "not done after 121 s: completion timeout 120 s (120 s per GiB x 1.00 GiB)"
    assert s.finished


def test_a_guest_that_dirties_as_fast_as_it_is_copied_is_aborted_after_30_s_without_a_smaller_pass():
    # Every pass from the second (at 8 s) on copies 640 MiB. Data left falls to
    # 128 MiB in each, as it did in the first: neither counts as progress.
    actions = run(steering(), busy_guest(), until_s=1000)
    assert timeline(actions) == [*RAMP, (ABORT, 39, 0)]
    assert actions[-1].reason == (
        "the data a pass copies has not gone below 640 MiB for 31 s: the guest dirties memory as fast as it is "
        "copied (no progress allowed for 30 s)"
    )


def test_a_network_stall_moves_no_bytes():
    # The link goes down in the first pass at 384 MiB left, the lowest yet.
    actions = run(steering(), busy_guest(link_down_at=6), until_s=1000)
    assert timeline(actions) == [(ABORT, 36, 0)]
    assert actions[0].reason == "no bytes moved for 31 s: network stall? (384 MiB left, no progress allowed for 30 s)"


def test_a_network_stall_after_the_low_says_both():
    # The smallest pass, 640 MiB, began at 8 s; bytes still moved until the link
    # went down at 11 s.
    actions = run(steering(), busy_guest(link_down_at=11), until_s=1000)
    assert timeline(actions) == [(SET, 8, 100), (ABORT, 39, 0)]
    assert actions[-1].reason == (
        "the data a pass copies has not gone below 640 MiB for 31 s, and no bytes moved in the last 29 s: "
        "network stall? (no progress allowed for 30 s)"
    )


def test_postcopy_allowed_switches_after_five_iterations_then_nothing_aborts_it():
    # Iteration 6 begins at 28 s, before the stall abort at 39 s.
    s = steering(DEFAULT_POSTCOPY, allow_postcopy=True)
    actions = run(s, busy_guest(), until_s=1000)
    assert timeline(actions) == [*RAMP, (POSTCOPY, 28, 0)]
    assert actions[-1].reason == (
        "iteration 6: no pass smaller than 640 MiB since iteration 2; switching to post-copy after 5 iterations"
    )
    assert s.finished  # past the 120 s timeout and the stall: no abort, the guest runs on the destination


def test_postcopy_not_allowed_the_same_guest_is_aborted():
    actions = run(steering(DEFAULT_POSTCOPY, allow_postcopy=False), busy_guest(), until_s=1000)
    assert timeline(actions) == [*RAMP, (ABORT, 39, 0)]


def test_postcopy_waits_for_an_iteration_without_a_new_low():
    # Passes 2, 5, 8... are each smaller than all before them: at iteration 6 the
    # previous pass (5) was; at iteration 7 neither pass 6 nor pass 7 is.
    s = steering(DEFAULT_POSTCOPY, allow_postcopy=True)
    actions = run(s, busy_guest(new_low_every=3), until_s=1000)
    assert timeline(actions) == [*RAMP, (POSTCOPY, 33, 0)]
    assert actions[-1].reason == (
        "iteration 7: no pass smaller than 639 MiB since iteration 5; switching to post-copy after 5 iterations"
    )


def test_postcopy_comes_too_late_when_passes_are_long_and_no_new_low_comes():
    # At 64 MiB/s a pass takes 10 s: iteration 2 begins at 16 s, iteration 6
    # would begin at 56 s, the stall abort comes at 47 s.
    actions = run(steering(DEFAULT_POSTCOPY, allow_postcopy=True), busy_guest(bandwidth_mib=64), until_s=1000)
    assert timeline(actions) == [(SET, 16, 100), (SET, 26, 150), (SET, 36, 200), (SET, 46, 250), (ABORT, 47, 0)]


# -- a lab run ------------------------------------------------------------------

# A TCG guest of 256 MiB dirtying 64 MiB/s, moved at a 16 MiB/s cap with the
# default policy. Samples from iteration 2 on as (MiB left, iteration), taken
# about 2 s apart after a first pass of 16 s. Each pass copies what was dirtied
# during the one before: 64 MiB, then about 55 MiB, then about 47 MiB.
LAB_RUN = [
    (64.0, 2), (32.1, 2), (0.1, 2),
    (19.5, 3),  # one sample, 2 s into the pass
    (53.0, 4), (21.1, 4),
    (54.6, 5), (22.6, 5),
    (54.6, 6), (22.6, 6),
    (54.6, 7), (22.7, 7),
    (54.7, 8), (14.7, 8),
    (46.6, 9), (14.6, 9),
    (46.6, 10),
]  # fmt: skip


def test_a_lab_run_whose_passes_shrink_is_not_stalled():
    # Samples 2.16 s apart from 18 s, the last at 52.56 s. Data left reached
    # 0.1 MiB at the end of pass 2, 30.2 s before the last sample; judged by data
    # left, the run was aborted there ("data left has not gone below 0.1 MiB for
    # 30.2 s"). Pass 3, sampled once 2 s into it, counts with what it had copied
    # by then (about 54 MiB, not the 19.5 MiB left): the pass sizes are judged,
    # not the sawtooth of data left.
    s = steering()
    actions = run(s, sampled(LAB_RUN, first_ms=18_000, every_ms=2_160), until_s=1000)
    assert timeline(actions) == [(SET, 18, 100), (SET, 24, 150), (SET, 26, 200), (SET, 30, 250), (SET, 35, 300)]
    assert not s.finished
    assert s.timeout_seconds() > 52.56


def test_a_tightening_throttle_is_progress_too():
    # Passes of the same size, but QEMU raises its throttle every 10 s: no stall.
    flat = [(left, n) for n in range(2, 30) for left in (54.6, 22.6)]
    s = steering()
    actions = []
    for i, (now, sample) in enumerate(sampled(flat, first_ms=18_000, every_ms=2_000)):
        actions += s.observe(sample, now, throttle_percent=min(30 + 20 * (i // 5), 99))
        if sample.elapsed_ms > 70_000:
            break
    assert ABORT not in [a.kind for a in actions]


def test_passes_that_stay_the_same_size_are_a_stall():
    # Had the lab guest's passes not shrunk: every pass copies 54.6 MiB, sampled
    # 2 s apart at its start and on its way down. The first of them, at 18 s, is
    # the smallest: 30 s later (48 s) is not yet too long, 32 s is.
    flat = [(left, n) for n in range(2, 30) for left in (54.6, 22.6)]
    actions = run(steering(), sampled(flat, first_ms=18_000, every_ms=2_000), until_s=1000)
    assert timeline(actions) == [(SET, 18, 100), (SET, 22, 150), (SET, 26, 200), (SET, 30, 250), (SET, 34, 300),
                                 (ABORT, 50, 0)]  # fmt: skip
    assert actions[-1].reason == (
        "the data a pass copies has not gone below 55 MiB for 32 s: the guest dirties memory as fast as it is "
        "copied (no progress allowed for 30 s)"
    )


# -- each policy, as its description says ---------------------------------------


@pytest.mark.parametrize(
    ("policy", "max_downtime_ms", "first"),
    [
        ("default", 300, 50),
        ("gentle", 300, 50),
        ("insist", 300, 50),
        ("plain", 300, 300),  # max downtime from the start
        ("default", 30, 30),  # never above the session's max
        ("plain", 30, 30),
    ],
)
def test_first_downtime(policy, max_downtime_ms, first):
    assert steering(policy, max_downtime_ms=max_downtime_ms).first_downtime_ms() == first


def test_no_ramp_when_the_max_is_below_the_policys_start():
    actions = run(steering(max_downtime_ms=30), busy_guest(new_low_every=1), until_s=100)
    assert [a for a in actions if a.kind is SET] == []


def test_the_ramp_rounds_down_to_whole_ms():
    # 50 + 283 * k / 5: 106.6, 163.2, 219.8, 276.4, 333
    actions = run(steering(max_downtime_ms=333), busy_guest(new_low_every=1), until_s=100)
    assert [value for kind, _, value in timeline(actions) if kind is SET] == [106, 163, 219, 276, 333]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # post-copy after 5 iterations once an iteration passes without a new low
        ("default", [*RAMP, (POSTCOPY, 33, 0)]),
        # never post-copy: 60 s per GiB
        ("gentle", [*RAMP, (ABORT, 61, 0)]),
        # post-copy after 2 iterations: not in iteration 3 (pass 2 was a new low), in iteration 4
        ("insist", [(SET, 8, 100), (SET, 13, 150), (SET, 18, 200), (POSTCOPY, 18, 0)]),
        # no lever at all: 120 s per GiB
        ("plain", [(ABORT, 121, 0)]),
    ],
)
def test_an_oscillating_guest_with_postcopy_allowed(policy, expected):
    assert timeline(run(steering(policy, allow_postcopy=True), busy_guest(new_low_every=3), until_s=1000)) == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("default", [*RAMP, (ABORT, 121, 0)]),
        ("gentle", [*RAMP, (ABORT, 61, 0)]),
        # after 120 s, pause the guest: a pass of 633 MiB at 128 MiB/s takes 4945 ms, x 1.5
        # (377 MiB are left of the pass under way, but QEMU stops at a pass's end);
        # the timeout of 300 s per GiB still applies
        ("insist", [*RAMP, (PAUSE, 120, 7418), (ABORT, 301, 0)]),
        ("plain", [(ABORT, 121, 0)]),
    ],
)
def test_an_oscillating_guest_with_postcopy_not_allowed(policy, expected):
    assert timeline(run(steering(policy), busy_guest(new_low_every=3), until_s=1000)) == expected


@pytest.mark.parametrize(
    ("policy", "abort_at"),
    # the smallest pass begins at 8 s; + 30, 20, 60, 30 s, and the next sample
    [("default", 39), ("gentle", 29), ("insist", 69), ("plain", 39)],
)
def test_a_stalling_guest_is_aborted_after_the_policys_stall_seconds(policy, abort_at):
    actions = run(steering(policy), busy_guest(), until_s=1000)
    assert timeline(actions)[-1] == (ABORT, abort_at, 0)
    assert "the guest dirties memory as fast as it is copied" in actions[-1].reason


def test_the_pause_reason_and_the_downtime_it_sets():
    # At 120 s, 2 s into pass 24 of 633 MiB.
    actions = run(steering("insist"), busy_guest(new_low_every=3), until_s=120)
    assert actions[-1].kind is PAUSE
    assert actions[-1].reason == (
        "still copying after 120 s (pause after 120 s): pausing the guest to copy a last pass of 633 MiB at 128 MiB/s; "
        "max downtime -> 7418 ms"
    )


def test_a_pause_never_sets_less_than_the_max_downtime():
    s = steering("insist", max_downtime_ms=500)
    nearly_done = Progress(elapsed_ms=120_000, data_total=GIB, data_processed=GIB, data_remaining=MIB,
                           bandwidth_bps=100 * MIB, iteration=1)  # fmt: skip
    assert [(a.kind, a.value) for a in s.observe(nearly_done, T0 + 120)] == [(PAUSE, 500)]
    assert s.observe(nearly_done, T0 + 121) == []  # once


def test_a_pause_with_no_bandwidth_measured_asks_for_qemus_largest_downtime():
    s = steering("insist")
    link_down = Progress(elapsed_ms=120_000, data_total=GIB, data_processed=GIB, data_remaining=400 * MIB,
                         bandwidth_bps=0, iteration=1)  # fmt: skip
    assert [(a.kind, a.value) for a in s.observe(link_down, T0 + 120)] == [(PAUSE, 2_000_000)]  # 2000 s


# -- completion timeout ---------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "memory_mib", "seconds_per_gib", "abort_at", "says"),
    # A 256 MiB guest has a 160 MiB working set; every pass is smaller than the one before.
    [
        ("default", 4096, None, 481, "completion timeout 480 s (120 s per GiB x 4.00 GiB)"),
        ("default", 4096, 30.0, 121, "completion timeout 120 s (30 s per GiB x 4.00 GiB)"),  # the session's override
        ("default", 256, None, 121, "completion timeout 120 s (120 s per GiB x 0.25 GiB, at least 120 s)"),
        ("gentle", 256, None, 31, "completion timeout 30 s (60 s per GiB x 0.25 GiB, at least 30 s)"),
        ("insist", 256, None, 121, "completion timeout 120 s (300 s per GiB x 0.25 GiB, at least 120 s)"),
        ("default", 256, 30.0, 121, "completion timeout 120 s (30 s per GiB x 0.25 GiB, at least 120 s)"),
    ],
)
def test_completion_timeout(policy, memory_mib, seconds_per_gib, abort_at, says):
    s = steering(policy, seconds_per_gib=seconds_per_gib)
    small = {"working_set_mib": 160} if memory_mib < 1024 else {}
    actions = run(s, busy_guest(new_low_every=1, memory_mib=memory_mib, **small), until_s=1000)
    assert timeline(actions)[-1] == (ABORT, abort_at, 0)
    assert says in actions[-1].reason


def test_the_timeout_follows_the_largest_data_total_seen():
    s = steering()
    grown = Progress(elapsed_ms=200_000, data_total=2 * GIB, data_processed=GIB, data_remaining=GIB, iteration=1)
    shrunk = Progress(elapsed_ms=201_000, data_total=GIB, data_processed=GIB + MIB, data_remaining=GIB - MIB,
                      iteration=1)  # fmt: skip
    assert s.observe(grown, T0) == []  # 2 GiB: 240 s
    assert s.observe(shrunk, T0 + 1) == []
    assert s.timeout_seconds() == 240


# -- QEMU's throttle ------------------------------------------------------------


def test_throttling_is_reported_when_it_begins_and_every_20_points_after():
    # QEMU begins at 20% after 20 s and adds 10 points every 5 s, up to 99%.
    def throttle(t: int) -> int:
        return 0 if t < 20 else min(99, 20 + 10 * ((t - 20) // 5))

    actions = run(steering(), busy_guest(new_low_every=1), until_s=100, throttle=throttle)
    reports = [a for a in actions if a.kind is THROTTLE]
    assert timeline(reports) == [(THROTTLE, 20, 20), (THROTTLE, 30, 40), (THROTTLE, 40, 60), (THROTTLE, 50, 80)]
    assert reports[0].reason == "QEMU began throttling the guest's vCPUs at 20% (dirty rate 160 MiB/s, bandwidth 128 MiB/s)"
    assert reports[1].reason.startswith("QEMU raised the guest's vCPU throttle 20% -> 40%")


def test_actions_of_one_sample_come_in_order():
    # Iteration 6 at 28 s: the last downtime step, then QEMU's throttle, then post-copy.
    actions = run(steering(DEFAULT_POSTCOPY, allow_postcopy=True), busy_guest(), until_s=28,
                  throttle=lambda t: 30 if t >= 28 else 0)  # fmt: skip
    assert timeline(actions)[-3:] == [(SET, 28, 300), (THROTTLE, 28, 30), (POSTCOPY, 28, 0)]


# -- what the engine ignores ----------------------------------------------------


def test_samples_of_a_job_still_setting_up_are_ignored():
    s = steering()
    setting_up = Progress(elapsed_ms=0, iteration=0)
    assert s.observe(setting_up, T0 - 100) == []
    # libvirt may report iteration 0 before the first pass: no downtime step, and
    # the 30 s without progress count from the first real sample, not the setup.
    first = Progress(elapsed_ms=1000, data_total=GIB, data_processed=MIB, data_remaining=GIB - MIB, iteration=0)
    assert s.observe(first, T0) == []
    assert s.observe(first, T0 + 30) == []
    assert [a.kind for a in s.observe(first, T0 + 30.5)] == [ABORT]


def test_after_an_abort_nothing_more():
    s = steering()
    actions = run(s, busy_guest(), until_s=39)
    assert actions[-1].kind is ABORT
    assert run(s, busy_guest(), until_s=1000) == []
    assert s.finished


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="max_downtime_ms"):
        steering(max_downtime_ms=0)
    with pytest.raises(ValueError, match="seconds_per_gib"):
        steering(seconds_per_gib=0.0)
