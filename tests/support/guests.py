"""Checks on lab guests after a move: where they run, and that they never stopped.

The invariant every lab test proves: a VM runs in exactly one place, and a
live migration never restarted it.
"""

from ferry.cli.client import FerryClient
from ferry.lab.lab import Lab


def assert_runs_only_on(lab: Lab, guest: str, host: str) -> None:
    where = lab.residency(guest)[guest]
    assert where.running_on == (host,) and where.active_on == (host,) and where.defined_on == (host,), where.explain()


def assert_never_restarted(lab: Lab, guest: str) -> None:
    report = lab.continuity(guest)
    assert report.ok, report.explain()
    assert len(report.boot_ids) == 1, report.explain()


def wait_ticking_on(lab: Lab, guest: str, host: str) -> None:
    before = lab.wait_for_tick(guest, host, 1)
    lab.wait_for_tick(guest, host, before + 1)


def assert_moved_intact(lab: Lab, guest: str, host: str) -> None:
    """On `host` only, still ticking there, on its first boot."""
    assert_runs_only_on(lab, guest, host)
    wait_ticking_on(lab, guest, host)
    assert_never_restarted(lab, guest)


async def client_for(lab: Lab) -> FerryClient:
    return await FerryClient.connect(lab.nats_settings(request_timeout=10.0))
