"""An operator's levers on a running migration, as agent/steering.py decides them:
`force-complete` (post-copy when the session allows it, else pause the guest for
the last pass) and `downtime` (the limit now, and the ceiling of the ramp)."""

import pytest

from ferry.agent.steering import QEMU_MAX_DOWNTIME_MS, Steering
from ferry.proto.convergence import POLICIES, ActionKind
from ferry.proto.progress import Progress

MIB = 1 << 20
T0 = 5_000.0


def sample(*, left_mib: int = 512, bandwidth_mib: int = 256, iteration: int = 3, elapsed_s: int = 10) -> Progress:
    return Progress(
        elapsed_ms=elapsed_s * 1000,
        data_total=1024 * MIB,
        data_processed=bandwidth_mib * MIB * elapsed_s,
        data_remaining=left_mib * MIB,
        bandwidth_bps=bandwidth_mib * MIB,
        dirty_rate_bps=512 * MIB,
        iteration=iteration,
    )


def steering(policy: str = "plain", *, allow_postcopy: bool = False, max_downtime_ms: int = 300) -> Steering:
    return Steering(POLICIES[policy], max_downtime_ms=max_downtime_ms, allow_postcopy=allow_postcopy)


@pytest.mark.parametrize(
    "policy, allow_postcopy, kind",
    [
        # Post-copy whenever the session allows it, whether or not the policy would switch by itself.
        ("plain", True, ActionKind.POSTCOPY),
        ("gentle", True, ActionKind.POSTCOPY),
        ("default", True, ActionKind.POSTCOPY),
        ("plain", False, ActionKind.PAUSE),
        ("default", False, ActionKind.PAUSE),
        ("insist", False, ActionKind.PAUSE),
    ],
)
def test_force_complete_is_postcopy_when_the_session_allows_it_else_a_pause(policy, allow_postcopy, kind):
    s = steering(policy, allow_postcopy=allow_postcopy)
    assert s.postcopy_armed is allow_postcopy
    action = s.force_complete(sample(), T0, by="alice")
    assert action is not None and action.kind == kind
    assert action.at == T0 and action.sample == sample()
    assert "force-complete by alice" in action.reason


def test_postcopy_ends_the_steering():
    s = steering("plain", allow_postcopy=True)
    action = s.force_complete(sample(left_mib=300), T0)
    assert action.reason == "force-complete: switching to post-copy with 300 MiB left"
    assert s.finished
    # Nothing more is steered: not by the policy, not by an operator.
    assert s.observe(sample(elapsed_s=200), T0 + 200) == []
    assert s.force_complete(sample(), T0 + 1) is None
    assert s.set_max_downtime(1000, T0 + 1) is None


@pytest.mark.parametrize(
    "left_mib, bandwidth_mib, max_downtime_ms, value",
    [
        (512, 256, 300, 3000),  # 1.5 x 512 MiB / 256 MiB/s
        (10, 256, 300, 300),  # never below the session's own limit
        (1, 1, 300, 1500),
        (2048, 1, 300, QEMU_MAX_DOWNTIME_MS),  # 3072 s: QEMU refuses more than 2000 s
    ],
)
def test_a_pause_raises_max_downtime_to_what_the_rest_needs(left_mib, bandwidth_mib, max_downtime_ms, value):
    s = steering("plain", max_downtime_ms=max_downtime_ms)
    action = s.force_complete(sample(left_mib=left_mib, bandwidth_mib=bandwidth_mib), T0)
    assert (action.kind, action.value) == (ActionKind.PAUSE, value)
    assert "post-copy not allowed" in action.reason and f"max downtime -> {value} ms" in action.reason
    assert not s.finished, "a paused migration is still steered: the policy may still abort it"


def test_after_a_forced_pause_the_policy_does_not_pause_again():
    # insist pauses by itself after 120 s.
    s = steering("insist")
    assert s.force_complete(sample(elapsed_s=30), T0 + 30).kind == ActionKind.PAUSE
    later = s.observe(sample(elapsed_s=130), T0 + 130)
    assert ActionKind.PAUSE not in [a.kind for a in later]


def test_force_complete_after_an_abort_does_nothing():
    s = steering("gentle")
    s.observe(sample(elapsed_s=1), T0 + 1)
    (abort,) = [a for a in s.observe(sample(elapsed_s=100), T0 + 100) if a.kind == ActionKind.ABORT]
    assert s.finished and s.force_complete(sample(), T0 + 101) is None


def test_downtime_set_by_an_operator_is_the_limit_and_the_ceiling_of_the_ramp():
    # default: 50 ms at the start, raised one step per iteration up to the session's 300 ms.
    s = steering("default")
    s.observe(sample(iteration=1, elapsed_s=1), T0 + 1)
    action = s.set_max_downtime(120, T0 + 2, by="alice", sample=sample(iteration=1, elapsed_s=2))
    assert (action.kind, action.value) == (ActionKind.SET_DOWNTIME, 120)
    assert action.reason == "set by alice: max downtime 50 -> 120 ms"
    steps = [a for i in range(2, 9) for a in s.observe(sample(iteration=i, elapsed_s=2 + i), T0 + 2 + i)]
    assert [a for a in steps if a.kind == ActionKind.SET_DOWNTIME] == []


def test_a_pause_after_a_downtime_change_never_goes_below_it():
    s = steering("plain")
    s.set_max_downtime(5000, T0)
    # The rest needs 3000 ms; the operator allowed 5000.
    assert s.force_complete(sample(left_mib=512, bandwidth_mib=256), T0 + 1).value == 5000


def test_a_downtime_below_one_ms_is_refused():
    with pytest.raises(ValueError, match="at least 1 ms"):
        steering().set_max_downtime(0, T0)
