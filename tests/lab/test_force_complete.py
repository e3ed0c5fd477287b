"""An operator's hand on a running migration of a real busy guest: `ferry
force-complete` switches it to post-copy (virDomainMigrateStartPostCopy) when
the session allows it, else pauses the guest for the last pass (max downtime
raised to what the rest needs); `ferry downtime` lets a migration that would
never converge finish (virDomainMigrateSetMaxDowntime). The `plain` policy has
no lever of its own, so whatever finishes the migration is the operator's.
Real CLI, coordinator and agents, real libvirtd + QEMU, a real nats-server."""

from __future__ import annotations

import time

import msgspec
import pytest

from ferry.lab.lab import Lab
from ferry.proto.convergence import ActionKind
from ferry.proto.session import Session, SessionState
from tests.support.ferry_cli import ferry
from tests.support.guests import assert_moved_intact

pytestmark = pytest.mark.lab

# The busy guest rewrites this much memory a second; the cap is a quarter of it:
# plain pre-copy never converges (tests/lab/test_convergence.py).
DIRTY_MB = 64
CAP_MIB = 16


def session(lab: Lab, session_id: str) -> Session:
    shown = ferry(lab, "session", session_id, "--json")
    assert shown.code == 0, shown.stderr
    return msgspec.json.decode(shown.stdout, type=Session)


def start(lab: Lab, guest: str, dest: str, *flags: str) -> Session:
    """A plain-policy migration of the busy guest, once the source reports progress."""
    started = ferry(lab, "migrate", guest, "--to", dest, "--bandwidth", str(CAP_MIB), "--policy", "plain", "--json", *flags)
    assert started.code == 0, started.stderr
    session_id = started.session().id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = session(lab, session_id)
        assert not current.state.terminal, f"{current.code}: {current.reason}"
        if current.state == SessionState.MIGRATING and current.progress is not None and current.progress.iteration >= 2:
            return current  # past the first pass: pre-copy is going round in circles
        time.sleep(0.5)
    raise AssertionError(f"session {session_id} was not copying within 60 s")


def finished(lab: Lab, session_id: str, timeout: float = 180) -> Session:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = session(lab, session_id)
        if current.state.terminal:
            return current
        time.sleep(0.5)
    raise AssertionError(f"session {session_id} did not end within {timeout} s")


def test_force_complete_switches_a_busy_guest_to_postcopy(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1", memory_mib=256, dirty_mb=DIRTY_MB, wait_ticks=3)
    running = start(lab, guest, "hv2", "--allow-postcopy")

    forced = ferry(lab, "force-complete", running.id)
    assert forced.code == 0, forced.stderr
    print(forced.stdout)
    final = finished(lab, running.id)

    assert final.state == SessionState.COMPLETED, f"{final.code}: {final.reason}"
    assert SessionState.POSTCOPY in [t.state for t in final.history]
    (postcopy,) = [a for a in final.steering if a.kind == ActionKind.POSTCOPY]
    assert postcopy.reason.startswith("force-complete by ")
    assert_moved_intact(lab, guest, "hv2")


def test_force_complete_pauses_a_busy_guest_when_postcopy_is_not_allowed(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1", memory_mib=256, dirty_mb=DIRTY_MB, wait_ticks=3)
    running = start(lab, guest, "hv3")

    forced = ferry(lab, "force-complete", running.id)
    assert forced.code == 0, forced.stderr
    print(forced.stdout)
    final = finished(lab, running.id)

    assert final.state == SessionState.COMPLETED, f"{final.code}: {final.reason}"
    assert SessionState.POSTCOPY not in [t.state for t in final.history]
    (pause,) = [a for a in final.steering if a.kind == ActionKind.PAUSE]
    assert pause.value > 300 and "post-copy not allowed" in pause.reason
    # Not that the pause was longer than 300 ms: QEMU stops the guest as soon as the
    # pass it expects fits the raised cap, and a pass can turn out short (once 263 ms).
    assert final.outcome is not None and final.outcome.downtime_ms > 0, final.outcome
    assert_moved_intact(lab, guest, "hv3")


def test_a_longer_downtime_lets_a_busy_guest_finish(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv2", memory_mib=256, dirty_mb=DIRTY_MB, wait_ticks=3)
    running = start(lab, guest, "hv1")

    # At 16 MiB/s a pass of up to 256 MiB takes 16 s: allow 30.
    changed = ferry(lab, "downtime", running.id, "30000")
    assert changed.code == 0, changed.stderr
    final = finished(lab, running.id)

    assert final.state == SessionState.COMPLETED, f"{final.code}: {final.reason}"
    assert final.options.max_downtime_ms == 30000
    (step,) = [a for a in final.steering if a.kind == ActionKind.SET_DOWNTIME]
    assert step.value == 30000 and step.reason.startswith("set by ")
    assert_moved_intact(lab, guest, "hv1")
