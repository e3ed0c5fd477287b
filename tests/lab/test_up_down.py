"""`ferry-lab up` is idempotent and `ferry-lab down` leaves nothing behind.

Runs the real CLI in a lab of its own (its own slot: folder and addresses), so
it neither sees nor disturbs the session lab of the other tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.lab import processes
from ferry.lab.lab import Lab, coordinator_role, nats_role
from ferry.lab.layout import COORDINATORS, NATS_SERVERS
from ferry.lab.slots import LabSlot, claim_slot, clear_slot

CLI = [sys.executable, "-m", "ferry.lab.cli"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_slot() -> Iterator[LabSlot]:
    with claim_slot() as slot:
        clear_slot(slot.dir)
        yield slot
        # Whatever the test did, leave the slot stopped.
        ferry_lab(slot, "down")


def ferry_lab(slot: LabSlot, *args: str, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(user or []), *CLI, "--dir", str(slot.dir), *args],
        capture_output=True, text=True, cwd=REPO, timeout=180,
    )  # fmt: skip


def lab_leftovers(slot: LabSlot) -> list[str]:
    """Anything of this lab still alive: processes naming its folder or addresses, mounts, namespaces."""
    found = []
    marks = (str(slot.dir), f"{slot.address_base}.")
    for pid in processes.all_pids():
        if pid == os.getpid() or processes.start_time_of(pid) is None:
            continue
        cmdline = " ".join(processes.cmdline_of(pid))
        if any(mark in cmdline for mark in marks) and "ferry.lab.cli" not in cmdline:
            found.append(f"process {pid}: {cmdline[:120]}")
    found += [f"process {pid} inside a lab namespace" for pid in processes.pids_with_mounts_from(slot.dir)]
    with open("/proc/mounts") as mounts:
        found += [f"mount {line.split()[1]}" for line in mounts if str(slot.dir) in line]
    for pid_file in slot.dir.glob("hv*/run/libvirt/qemu/*.pid"):
        pid = int(pid_file.read_text().strip() or 0)
        if processes.start_time_of(pid) is not None:
            found.append(f"QEMU {pid} of {pid_file}")
    return found


@pytest.mark.lab
def test_up_twice_then_down_leaves_nothing_running(own_slot: LabSlot) -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    # With Ferry's daemons when they can start (exit 0), else the core alone (exit 3).
    first = ferry_lab(own_slot, "up", "--hosts", "2", "--address-base", own_slot.address_base)
    assert first.returncode in (0, 3), first.stdout + first.stderr
    assert "started: libvirtd:hv2" in first.stdout
    with_ferry = first.returncode == 0
    for name in NATS_SERVERS:
        assert f"started: nats-server:{name} at tls://127.0.0.1:" in first.stdout
    if with_ferry:
        assert all(f"started: coordinator:{name}" in first.stdout for name in COORDINATORS), first.stdout
    second = ferry_lab(own_slot, "up")
    assert second.returncode == first.returncode, second.stdout + second.stderr
    assert "already running: libvirtd:hv1" in second.stdout and "already running: nats-server:n3" in second.stdout
    assert "started: libvirtd" not in second.stdout and "started: nats-server" not in second.stdout

    lab = Lab.attach(own_slot.dir)
    urls = lab.nats_urls
    assert len(set(urls)) == 3
    # A killed nats-server (and coordinator) starts again as `up` would: same ports.
    assert lab.kill(nats_role("n2"))
    lab.start(nats_role("n2"))
    if with_ferry:
        assert lab.kill(coordinator_role("c2"))
        lab.start(coordinator_role("c2"))
    assert Lab.attach(own_slot.dir).nats_urls == urls
    status = ferry_lab(own_slot, "status")
    assert status.returncode == (0 if with_ferry else 3), status.stdout + status.stderr
    assert all(url in status.stdout for url in urls), status.stdout
    assert all(f"running  nats-server:{name}" in status.stdout for name in NATS_SERVERS), status.stdout
    if with_ferry:
        assert all(f"running  coordinator:{name}" in status.stdout for name in COORDINATORS), status.stdout
    created = ferry_lab(own_slot, "guest", "create", "updown", "--host", "hv2", "--memory", "128", "--disk", "local")
    assert created.returncode == 0, created.stderr
    assert list(own_slot.dir.glob("hv2/run/libvirt/qemu/*.pid")), "no QEMU pid file"
    assert lab_leftovers(own_slot), "the check must see the running lab"

    down = ferry_lab(own_slot, "down")

    assert down.returncode == 0, down.stdout + down.stderr
    assert "destroyed guest updown on hv2" in down.stdout
    assert lab_leftovers(own_slot) == []
    status = ferry_lab(own_slot, "status")
    assert "running " not in status.stdout, status.stdout


def test_up_without_root_says_so(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run the CLI as another user")
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    result = subprocess.run(
        [*nobody, *CLI, "--dir", str(tmp_path / "lab"), "up"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "The lab needs root" in result.stderr
    assert "Traceback" not in result.stderr
