"""Convergence with real guests: a guest dirtying memory far faster than the
bandwidth cap is moved by the default policy, or stopped cleanly by one that
may not slow it down; the prediction made beforehand is on the right side.
Real CLI, coordinator and agents, real libvirtd + QEMU, a real nats-server."""

from __future__ import annotations

import msgspec
import pytest

from ferry.lab.lab import Lab
from ferry.proto.api import PlanReply
from ferry.proto.convergence import ActionKind
from ferry.proto.session import SessionState
from tests.support.ferry_cli import ferry
from tests.support.guests import assert_moved_intact

pytestmark = pytest.mark.lab

MIB = 1024 * 1024
# The busy guest rewrites this much memory a second; the cap is a quarter of it.
DIRTY_MB = 64
CAP_MIB = 16




def plan(lab: Lab, guest: str, *flags: str) -> PlanReply:
    result = ferry(lab, "migrate", guest, "--dry-run", "--json", *flags)
    assert result.code == 0, result.stderr
    return msgspec.json.decode(result.stdout, type=PlanReply)


def test_the_prediction_tells_a_quiet_guest_from_a_busy_one(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    quiet = guest_factory(host="hv1", memory_mib=256, dirty_mb=0, wait_ticks=3)
    busy = guest_factory(host="hv1", memory_mib=256, dirty_mb=DIRTY_MB, wait_ticks=3)

    calm = plan(lab, quiet, "--bandwidth", str(CAP_MIB))
    hot = plan(lab, busy, "--bandwidth", str(CAP_MIB))

    print(f"quiet: {calm.prediction}\nbusy: {hot.prediction}")
    assert calm.prediction is not None and calm.prediction.converges, calm
    assert calm.prediction.expected_total_ms > 0 and calm.prediction.bandwidth_bps == CAP_MIB * MIB
    assert hot.prediction is not None and not hot.prediction.converges, hot
    assert hot.prediction.dirty_rate_bps > CAP_MIB * MIB
    assert "auto-converge" in hot.prediction.steps_needed
    # A dry run moves nothing.
    assert lab.residency(quiet)[quiet].running_on == ("hv1",)
    assert lab.residency(busy)[busy].running_on == ("hv1",)


def test_the_default_policy_moves_a_guest_dirtying_four_times_the_cap(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1", memory_mib=256, dirty_mb=DIRTY_MB, wait_ticks=3)

    result = ferry(lab, "migrate", guest, "--to", "hv2", "--bandwidth", str(CAP_MIB), "--wait", "--json", timeout=240)

    assert result.code == 0, result.stderr
    session = result.session()
    assert session.state == SessionState.COMPLETED, f"{session.code}: {session.reason}"
    kinds = [a.kind for a in session.steering]
    print("\n".join(f"{a.kind} {a.value}: {a.reason}" for a in session.steering))
    assert ActionKind.SET_DOWNTIME in kinds, "max downtime was raised step by step"
    assert ActionKind.AUTO_CONVERGE_ENGAGED in kinds, "QEMU throttled the guest to make it converge"
    assert all(a.sample is not None for a in session.steering), "every action keeps the sample that caused it"
    assert ActionKind.ABORT not in kinds
    # Predicted against actual, both kept.
    assert session.prediction is not None and not session.prediction.converges
    assert session.outcome is not None and session.outcome.downtime_ms > 0
    assert_moved_intact(lab, guest, "hv2")
    shown = ferry(lab, "session", session.id)
    assert "predicted: does not converge" in shown.stdout and "policy auto_converge_engaged" in shown.stdout


def test_a_policy_that_may_not_slow_the_guest_aborts_cleanly_and_it_stays_on_its_source(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1", memory_mib=256, dirty_mb=DIRTY_MB, wait_ticks=3)

    result = ferry(
        lab, "migrate", guest, "--to", "hv3", "--bandwidth", str(CAP_MIB),
        "--policy", "gentle", "--seconds-per-gib", "40", "--wait", "--json", timeout=240,
    )

    assert result.code == 1
    session = result.session()
    assert session.state == SessionState.FAILED and session.code == "not_converging", session.reason
    assert session.reason.startswith("the gentle policy aborted it:")
    abort = session.steering[-1]
    assert abort.kind == ActionKind.ABORT and abort.sample is not None
    assert ActionKind.AUTO_CONVERGE_ENGAGED not in [a.kind for a in session.steering]
    # On its source only: running, active and defined there and nowhere else.
    assert_moved_intact(lab, guest, "hv1")
