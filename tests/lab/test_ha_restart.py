"""When a lab host loses its power, its HA guests run again on the other hosts,
each exactly once, and the rest is reported; when it comes back it does not
start them again. Real libvirtd + QEMU, real Ferry daemons, fence_lab, shared
disks under libvirt's lock manager (tests/lab/test_lock_manager.py shows the
lock itself)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from ferry.lab.fence_lab import BROKEN
from ferry.lab.lab import Lab
from tests.lab.test_power import LAB_CLI, event_of, fence_lab, wait_state
from tests.support.ferry_cli import ferry

pytestmark = pytest.mark.lab


def events_since(lab: Lab, after: float) -> list[dict]:
    """The events stored after `after` (wall clock). A read the event stream refuses for a
    moment (JetStream busy on a loaded CI machine) is tried again."""
    for _attempt in range(10):
        shown = ferry(lab, "events", "--since", "5m", "--json")
        if shown.code == 0:
            return [r["event"] for r in json.loads(shown.stdout) if r["event"]["at"] > after]
        assert "unavailable" in shown.stderr, shown.stderr
        time.sleep(1.0)
    raise AssertionError(shown.stderr)


def restarted(lab: Lab, vms: set[str], after: float, timeout: float = 120.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        seen = events_since(lab, after)
        done = {e["vm"]: e for e in seen if e.get("type") == "vm_restarted" and e["vm"] in vms}
        if set(done) == vms:
            return done
        failed = [e for e in seen if e.get("type") == "vm_restart_failed"]
        assert not failed, failed
        assert time.monotonic() < deadline, f"not restarted: {vms - set(done)}"
        time.sleep(1.0)


def test_a_power_cut_restarts_the_ha_guests_elsewhere_once_and_the_host_back_does_not_start_them(
    lab_with_ferry: Lab, guest_factory
) -> None:
    lab = lab_with_ferry
    high = guest_factory(host="hv1", disk="shared")
    low = guest_factory(host="hv1", disk="shared")
    plain = guest_factory(host="hv1", disk="shared")
    for vm, priority in ((high, "high"), (low, "low")):
        assert ferry(lab, "ha", "set", vm, "--priority", priority).code == 0
    deadline = time.monotonic() + 30
    while True:
        shown = ferry(lab, "ha", "show", high, low).stdout.splitlines()
        if len(shown) == 2 and all("definition kept from hv1" in line for line in shown):
            break
        assert time.monotonic() < deadline, shown
        time.sleep(0.5)
    cut_at = time.time()
    cut = subprocess.run([*LAB_CLI, "--dir", str(lab.dir), "host", "poweroff", "hv1"], capture_output=True, text=True,
                         timeout=60)
    try:
        assert cut.returncode == 0, cut.stderr
        done = restarted(lab, {high, low}, cut_at)
        where = lab.residency(high, low, plain)
        for vm in (high, low):
            # Exactly one copy runs, on a host that was not cut, and it boots and ticks there.
            assert where[vm].running_on == (done[vm]["dest"],) and done[vm]["dest"] in ("hv2", "hv3"), where[vm].explain()
            lab.wait_for_tick(vm, done[vm]["dest"], 2)
        assert where[plain].running_on == (), where[plain].explain()
        seconds = {vm: done[vm]["seconds"] for vm in (high, low)}
        print(f"\nHA restart after a power cut of hv1 (heartbeat timeout + probe + fence + boot): {seconds} s")
        story = [(e["type"], e.get("vm") or e.get("host")) for e in events_since(lab, cut_at)
                 if e.get("host") == "hv1" or e.get("vm") in (high, low, plain)]
        kinds = [k for k, _who in story]
        assert kinds.index("host_lost") < kinds.index("host_probed") < kinds.index("host_fenced"), story
        fenced = kinds.index("host_fenced")
        assert story[fenced + 1: fenced + 4] == [
            ("vm_restart_queued", high), ("vm_restart_queued", low), ("vm_not_restarted", plain)
        ], story
        for vm in (high, low):
            assert story.index(("vm_restart_starting", vm)) < story.index(("vm_restarted", vm)), story
        skipped = next(e for e in events_since(lab, cut_at) if e.get("type") == "vm_not_restarted")
        assert skipped["reason"].startswith("its HA priority is off"), skipped
        listed = json.loads(ferry(lab, "ha", "restarts", "--host", "hv1", "--json").stdout)["restarts"]
        assert {r["vm"]: r["state"] for r in listed if r["created_at"] > cut_at} == {high: "running", low: "running"}
    finally:
        back = fence_lab(lab, "action=on", "plug=hv1")
        lab.reload()
    assert back.returncode == 0, back
    wait_state(lab, "hv1", "up")
    # Back again: the definitions of the guests that run elsewhere are removed on hv1, so nothing starts them twice.
    retired = event_of(lab, "vms_retired", "hv1", cut_at)
    assert (sorted(retired["vms"]), retired["running"]) == (sorted([high, low]), []), retired
    where = lab.residency(high, low, plain)
    for vm in (high, low):
        assert "hv1" not in where[vm].defined_on and len(where[vm].running_on) == 1, where[vm].explain()
    assert where[plain].defined_on == ("hv1",) and where[plain].running_on == (), where[plain].explain()
    shown = json.loads(ferry(lab, "hosts", "--json").stdout)["hosts"]
    assert next(h for h in shown if h["host"] == "hv1")["drain_reason"].startswith("fenced: fence_lab confirms hv1 is off")
    undrained = ferry(lab, "undrain", "hv1")
    assert undrained.code == 0, undrained.stderr


def test_a_fence_that_fails_restarts_nothing_until_an_operator_confirms_the_host_dead(
    lab_with_ferry: Lab, guest_factory
) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv3", disk="shared")
    assert ferry(lab, "ha", "set", guest, "--priority", "high").code == 0
    broken = lab.host("hv3").root / BROKEN
    broken.touch()
    cut_at = time.time()
    try:
        deadline = time.monotonic() + 30
        while "definition kept from hv3" not in ferry(lab, "ha", "show", guest).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        cut = subprocess.run([*LAB_CLI, "--dir", str(lab.dir), "host", "poweroff", "hv3"], capture_output=True,
                             text=True, timeout=60)
        assert cut.returncode == 0, cut.stderr
        failed = event_of(lab, "host_not_fenced", "hv3", cut_at)
        assert "fence_lab action=off failed" in failed["reason"] and "does not answer" in failed["reason"], failed
        time.sleep(5)  # a restart would be planned at once after a fence: nothing may come
        assert not [e for e in events_since(lab, cut_at) if e.get("type", "").startswith("vm_restart")]
        assert lab.residency(guest)[guest].running_on == ()
        confirmed = ferry(lab, "host", "confirm-dead", "hv3", "--reason", "checked the lab: hv3 is off")
        assert confirmed.code == 0, confirmed.stderr
        done = restarted(lab, {guest}, cut_at)
        assert lab.residency(guest)[guest].running_on == (done[guest]["dest"],)
        lab.wait_for_tick(guest, done[guest]["dest"], 2)
    finally:
        broken.unlink(missing_ok=True)
        fence_lab(lab, "action=on", "plug=hv3")
        lab.reload()
    wait_state(lab, "hv3", "up")
    retired = event_of(lab, "vms_retired", "hv3", cut_at)
    assert retired["vms"] == [guest], retired
    assert ferry(lab, "undrain", "hv3").code == 0
