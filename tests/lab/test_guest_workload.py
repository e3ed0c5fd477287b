"""The lab guest dirties the memory it is asked to (the load migrations must converge under)."""

from __future__ import annotations

import time

import libvirt
import pytest

from ferry.lab.lab import Lab
from ferry.lab.libvirt_conn import open_host

pytestmark = pytest.mark.lab


def dirty_rate_mib_per_s(lab: Lab, name: str, host: str) -> float:
    with open_host(lab.host(host)) as conn:
        dom = conn.lookupByName(name)
        deadline = time.monotonic() + 10
        while True:
            try:
                dom.startDirtyRateCalc(1)
                break
            except libvirt.libvirtError:
                # Ferry's agent measures every guest now and then; QEMU takes one at a time.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        while time.monotonic() < deadline:
            time.sleep(0.5)
            (_, stats), = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE)
            if stats.get("dirtyrate.calc_status") == libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED:
                return float(stats["dirtyrate.megabytes_per_second"])
    raise AssertionError(f"libvirt did not measure the dirty rate of {name}")


def test_dirty_mb_sets_how_fast_the_guest_rewrites_memory(lab: Lab, guest_factory) -> None:
    busy = guest_factory(host="hv1", memory_mib=256, dirty_mb=16, wait_ticks=0)
    idle = guest_factory(host="hv2", wait_ticks=0)
    lab.wait_for_tick(busy, "hv1", 3)  # the workload starts right after boot
    lab.wait_for_tick(idle, "hv2", 3)

    # Page sampling reads coarsely (on a 256 MiB guest one changed sample page is
    # 2 MiB/s) and a loaded 2-core machine slows the guest's writer: the best of
    # three readings says what the workload does.
    busy_rate = max(dirty_rate_mib_per_s(lab, busy, "hv1") for _ in range(3))
    idle_rate = dirty_rate_mib_per_s(lab, idle, "hv2")

    print(f"dirty rate: busy {busy_rate} MiB/s, idle {idle_rate} MiB/s")
    assert busy_rate >= 8, f"asked for 16 MiB/s, measured {busy_rate} MiB/s"
    assert idle_rate < busy_rate / 2, f"idle {idle_rate} MiB/s vs busy {busy_rate} MiB/s"
