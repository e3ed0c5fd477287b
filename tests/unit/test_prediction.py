import pytest

from ferry.coordinator.prediction import MAX_ITERATIONS, predict
from ferry.proto.convergence import POLICIES, Policy

MIB = 1024 * 1024
GIB = 1024 * MIB
DEFAULT = POLICIES["default"]


def run(memory_mib=256, dirty_mib=0.0, bandwidth_mib=16, max_downtime_ms=500, policy=DEFAULT, postcopy=False, **extra):
    return predict(
        memory_bytes=int(memory_mib * MIB),
        dirty_rate_bps=int(dirty_mib * MIB),
        bandwidth_bps=int(bandwidth_mib * MIB),
        max_downtime_ms=max_downtime_ms,
        policy=policy,
        allow_postcopy=postcopy,
        **extra,
    )


def test_a_quiet_guest_converges_in_few_iterations_with_a_tiny_downtime():
    # 256 MiB at 16 MiB/s: 16 s; 1 MiB/s dirtied meanwhile = 16 MiB, 1 s more;
    # 1 MiB dirtied then, 62.5 ms to copy paused.
    p = run(dirty_mib=1)
    assert p.converges
    assert (p.iterations, p.expected_total_ms, p.expected_downtime_ms) == (2, 17063, 63)
    assert p.steps_needed == []
    assert p.reason == (
        "dirties 1.0 MiB/s, copies 16.0 MiB/s: pre-copy converges, about 17.1 s in 2 iterations, 63 ms downtime"
    )


def test_a_busy_guest_dirtying_faster_than_the_link_copies_does_not_converge():
    p = run(dirty_mib=64)
    assert not p.converges
    assert (p.iterations, p.expected_total_ms, p.expected_downtime_ms) == (0, 0, 0)
    assert p.steps_needed == ["raise max downtime", "auto-converge"]
    assert p.reason == (
        "dirties 64.0 MiB/s, copies 16.0 MiB/s: pre-copy cannot converge; the default policy will need auto-converge"
    )


@pytest.mark.parametrize(
    "dirty_mib, converges, iterations, downtime_ms",
    [
        (0, True, 1, 0),
        (8, True, 5, 500),  # halves each iteration: 128, 64, 32, 16, 8 MiB left
        (12, True, 13, 381),  # 0.75 a time: 256 × 0.75^13 = 6.1 MiB left, the first under 8 MiB
        (15, False, 0, 0),  # 0.9375 a time: still 39 MiB after 30 iterations
        (16, False, 0, 0),  # exactly the link speed: never shrinks
        (17, False, 0, 0),
    ],
)
def test_the_line_between_converging_and_not_lies_just_below_the_link_speed(dirty_mib, converges, iterations, downtime_ms):
    p = run(dirty_mib=dirty_mib)
    assert (p.converges, p.iterations, p.expected_downtime_ms) == (converges, iterations, downtime_ms)


def test_it_converges_when_what_is_left_fits_exactly_in_the_max_downtime():
    # 256 MiB at 16 MiB/s takes 16 s; 0.5 MiB/s dirties 8 MiB = 500 ms at 16 MiB/s.
    p = run(dirty_mib=0.5, max_downtime_ms=500)
    assert (p.converges, p.iterations, p.expected_downtime_ms, p.expected_total_ms) == (True, 1, 500, 16500)
    assert run(dirty_mib=0.5, max_downtime_ms=499).iterations == 2


def test_a_guest_cannot_dirty_more_than_its_memory():
    # 4 MiB of memory dirtied at 64 MiB/s: never more than 4 MiB left, and that fits in 500 ms at 16 MiB/s.
    p = run(memory_mib=4, dirty_mib=64)
    assert p.converges
    assert (p.iterations, p.expected_downtime_ms, p.expected_total_ms) == (1, 250, 500)


def test_the_memory_cap_does_not_help_a_guest_too_big_for_the_downtime():
    assert not run(memory_mib=9, dirty_mib=64).converges  # 9 MiB left > 8 MiB in 500 ms


def test_a_guest_that_converges_only_at_the_full_max_downtime_needs_it_raised():
    # 6 MiB/s, 0.375 a time: under 0.8 MiB (50 ms, where the default policy starts) after 6 iterations.
    p = run(dirty_mib=6, max_downtime_ms=500)
    assert p.converges and p.steps_needed == []
    # 14 MiB/s, 0.875 a time: under 8 MiB (500 ms) after 26 iterations, not under 0.8 MiB within 30.
    p = run(dirty_mib=14, max_downtime_ms=500)
    assert p.converges
    assert p.steps_needed == ["raise max downtime"]
    assert p.reason.startswith(
        "dirties 14.0 MiB/s, copies 16.0 MiB/s: pre-copy converges only once max downtime rises from 50 ms towards 500 ms"
    )
    assert p.reason.endswith("; the default policy will raise it")


def test_a_policy_that_starts_at_the_max_downtime_needs_no_raise():
    assert run(dirty_mib=14, policy=POLICIES["plain"]).steps_needed == []
    assert run(dirty_mib=64, policy=POLICIES["plain"]).steps_needed == ["abort on timeout"]


def test_a_start_downtime_above_the_sessions_max_is_the_max():
    policy = Policy(name="high", description="", downtime_start_ms=2000)
    assert run(dirty_mib=14, policy=policy, max_downtime_ms=500).steps_needed == []


@pytest.mark.parametrize(
    "policy, postcopy, steps, tail",
    [
        ("default", False, ["raise max downtime", "auto-converge"], "the default policy will need auto-converge"),
        (
            "default",
            True,
            ["raise max downtime", "auto-converge", "post-copy"],
            "the default policy will need auto-converge, then post-copy",
        ),
        (
            "gentle",
            True,
            ["raise max downtime", "abort on timeout"],
            "the gentle policy has no lever for that and will abort on timeout",
        ),
        (
            "insist",
            False,
            ["raise max downtime", "auto-converge", "pause"],
            "the insist policy will need auto-converge, then pause",
        ),
        (
            "insist",
            True,
            ["raise max downtime", "auto-converge", "post-copy", "pause"],
            "the insist policy will need auto-converge, then post-copy, then pause",
        ),
        ("plain", True, ["abort on timeout"], "the plain policy has no lever for that and will abort on timeout"),
    ],
)
def test_each_policy_names_the_levers_a_busy_guest_needs_in_order(policy, postcopy, steps, tail):
    p = run(dirty_mib=64, policy=POLICIES[policy], postcopy=postcopy)
    assert not p.converges
    assert p.steps_needed == steps
    assert p.reason == f"dirties 64.0 MiB/s, copies 16.0 MiB/s: pre-copy cannot converge; {tail}"


def test_post_copy_is_a_lever_only_when_both_the_policy_and_the_session_allow_it():
    policy = Policy(name="pc", description="", auto_converge=False, postcopy_after_iterations=3)
    assert run(dirty_mib=64, policy=policy, postcopy=True).steps_needed == ["raise max downtime", "post-copy"]
    assert run(dirty_mib=64, policy=policy, postcopy=False).steps_needed == ["raise max downtime", "abort on timeout"]


def test_slow_convergence_says_it_did_not_get_under_the_downtime():
    p = run(dirty_mib=15)
    assert p.reason == (
        f"dirties 15.0 MiB/s, copies 16.0 MiB/s: pre-copy does not get under 500 ms downtime within "
        f"{MAX_ITERATIONS} iterations; the default policy will need auto-converge"
    )


def test_no_bandwidth_limit_assumes_the_link_speed_and_says_so():
    p = run(dirty_mib=64, bandwidth_mib=0)
    assert p.converges and p.bandwidth_bps == GIB
    # 256 MiB at 1 GiB/s: 250 ms; 16 MiB dirtied meanwhile, 15.6 ms paused.
    assert (p.iterations, p.expected_downtime_ms, p.expected_total_ms) == (1, 16, 266)
    assert p.reason.startswith("dirties 64.0 MiB/s, copies 1.0 GiB/s (no limit set: assumed link speed): ")


def test_the_assumed_link_speed_can_be_given():
    p = predict(
        memory_bytes=256 * MIB, dirty_rate_bps=64 * MIB, bandwidth_bps=0, max_downtime_ms=500,
        policy=DEFAULT, allow_postcopy=False, link_bps=32 * MIB,
    )
    assert p.bandwidth_bps == 32 * MIB and not p.converges
    assert "copies 32.0 MiB/s (no limit set: assumed link speed)" in p.reason


def test_a_guest_without_memory_has_nothing_to_copy():
    p = run(memory_mib=0, dirty_mib=64)
    assert p.converges
    assert (p.iterations, p.expected_total_ms, p.expected_downtime_ms, p.steps_needed) == (0, 0, 0, [])
    assert p.reason == "no memory to copy"


def test_a_guest_that_dirties_nothing_needs_one_pass_and_no_downtime():
    p = run(memory_mib=1024, dirty_mib=0, bandwidth_mib=128)
    assert (p.converges, p.iterations, p.expected_total_ms, p.expected_downtime_ms) == (True, 1, 8000, 0)


def test_the_prediction_keeps_its_inputs_and_when_they_were_measured():
    p = run(dirty_mib=2, measured_at=1700000000.5, measure_seconds=1.0)
    assert (p.memory_bytes, p.dirty_rate_bps, p.bandwidth_bps) == (256 * MIB, 2 * MIB, 16 * MIB)
    assert (p.measured_at, p.measure_seconds) == (1700000000.5, 1.0)


@pytest.mark.parametrize("field", ["memory_bytes", "dirty_rate_bps", "bandwidth_bps", "max_downtime_ms"])
def test_negative_inputs_are_refused(field):
    values = {"memory_bytes": MIB, "dirty_rate_bps": 0, "bandwidth_bps": MIB, "max_downtime_ms": 500}
    values[field] = -1
    with pytest.raises(ValueError, match=f"{field} must not be negative"):
        predict(**values, policy=DEFAULT, allow_postcopy=False)
