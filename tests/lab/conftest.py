"""Fixtures for tests against the local lab (real libvirtd + QEMU; needs root).

- ``lab`` (session): a 3-host lab (libvirt + NATS, no Ferry daemons) started
  once per test run, stopped at the end. Its folder and addresses come from a
  slot (``lab_slot``) this run holds alone, so test runs may overlap.
- ``lab_with_ferry`` (session): the same lab with ferry-agent on every host and
  two ferry-coordinators (c1, c2); they stop at the end of the run.
- ``guest_factory`` (function): ``guest_factory(host="hv1", ...) -> name``
  creates a running guest that has printed its first ticks; every guest it
  made is deleted after the test, wherever it moved.

A lab that cannot start skips the tests that need it, except in CI (CI=true),
where it is a failure: a lab test never passes by not running.

A lab test that fails while one of its guests shows lost-write signs
(lab/lost_writes.py: the guest crashed or hung on the host it moved to) fails
as ``GuestBrokenInMove``, with the signs first. Nothing is run twice.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ferry.lab.errors import LabError
from ferry.lab.lab import Lab
from ferry.lab.slots import LabSlot, claim_slot, clear_slot
from tests.support.lost_write_report import pytest_runtest_call  # noqa: F401 (hook)

SESSION_HOSTS = 3

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cannot_run(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (in CI the lab must run)", pytrace=False)
    pytest.skip(reason)


def start_clean_lab(dir: Path, hosts: int, address_base: str, ferry: bool = False) -> Lab:
    """A fresh lab in ``dir``: no guests, sessions or certificates of earlier runs."""
    clear_slot(dir)
    lab = Lab.create(dir, hosts, address_base)
    report = lab.up(ferry=ferry)
    if not report.ok:
        lab.down()
        raise LabError(" ".join(report.failed.values()))
    return lab


@pytest.fixture(scope="session")
def lab_slot() -> Iterator[LabSlot]:
    """A folder and address range no other test run uses meanwhile."""
    try:
        with claim_slot() as slot:
            yield slot
    except LabError as error:
        cannot_run(str(error))


@pytest.fixture(scope="session")
def lab(lab_slot: LabSlot) -> Iterator[Lab]:
    try:
        started = start_clean_lab(lab_slot.dir, SESSION_HOSTS, lab_slot.address_base)
    except LabError as error:
        cannot_run(f"the lab cannot start: {error}")
    yield started
    started.down()


@pytest.fixture(scope="session")
def lab_with_ferry(lab: Lab) -> Iterator[Lab]:
    report = lab.start_ferry()
    if not report.ok:
        lab.stop_ferry()
        cannot_run(f"Ferry's daemons cannot start in the lab: {' '.join(report.failed.values())}")
    yield lab
    lab.stop_ferry()


GuestFactory = Callable[..., str]
_serial = itertools.count(1)


@pytest.fixture
def guest_factory(lab: Lab, request: pytest.FixtureRequest) -> Iterator[GuestFactory]:
    made: list[str] = []
    request.node.lab_guests = made  # for lost_write_signs_of

    def make(
        host: str = "hv1",
        memory_mib: int = 128,
        dirty_mb: int = 0,
        disk: str = "none",
        disk_size_mib: int = 64,
        disk_content: Path | None = None,
        wait_ticks: int = 2,
        name: str | None = None,
        fill_mb: int = 0,
        networks: tuple[str, ...] = (),
    ) -> str:
        """Create and start a guest; wait until it printed ``wait_ticks`` ticks. Returns its name."""
        name = name or guest_name(request.node.name)
        made.append(name)
        lab.create_guest(name, host, memory_mib, dirty_mb, disk, disk_size_mib, disk_content, fill_mb, networks)  # type: ignore[arg-type]
        if wait_ticks:
            lab.wait_for_tick(name, host, wait_ticks)
        return name

    yield make
    for name in made:
        lab.delete_guest(name)


def guest_name(test_name: str) -> str:
    """A unique, valid VM name (letters, digits, '_' and '-') derived from the test's name."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", test_name.removeprefix("test_")).strip("-")[:40]
    return f"{stem}-{os.getpid() % 10000}-{next(_serial)}"
