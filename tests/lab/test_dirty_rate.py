"""Measuring a guest's dirty rate through the libvirt backend, against the lab's real libvirtd + QEMU (TCG)."""

import asyncio

import pytest

from ferry.agent.config import AgentConfig, HypervisorSettings
from ferry.agent.hypervisor import MeasurementFailed, VmNotFound, open_hypervisor
from ferry.lab.layout import IMAGES_PATH

pytestmark = pytest.mark.lab

MIB = 1024 * 1024
BUSY_MIB_PER_S = 64


def libvirt_hypervisor(lab, host: str):
    """The backend as ferry-agent builds it from the lab's agent.toml."""
    layout = lab.host(host)
    config = AgentConfig(
        host=host,
        images_dir=str(layout.images_dir),
        images_dir_in_domain=str(IMAGES_PATH),
        hypervisor=HypervisorSettings(backend="libvirt", uri=layout.uri),
    )
    return open_hypervisor(config)


async def measure(lab, host: str, *names: str, seconds: float = 1.0) -> list[int]:
    hv = libvirt_hypervisor(lab, host)
    try:
        return [await hv.measure_dirty_rate(name, seconds) for name in names]
    finally:
        await hv.close()


def test_a_busy_guest_measures_well_above_a_quiet_one_and_near_its_workload(lab, guest_factory):
    quiet = guest_factory(host="hv1", memory_mib=256, dirty_mb=0, wait_ticks=3)
    busy = guest_factory(host="hv1", memory_mib=256, dirty_mb=BUSY_MIB_PER_S, wait_ticks=3)
    quiet_bps, busy_bps, busy_again_bps = asyncio.run(measure(lab, "hv1", quiet, busy, busy))
    print(f"\ndirty rate, 1 s page-sampling: quiet {quiet_bps / MIB:.0f} MiB/s, "
          f"busy ({BUSY_MIB_PER_S} MiB/s workload) {busy_bps / MIB:.0f} then {busy_again_bps / MIB:.0f} MiB/s")
    assert quiet_bps <= 8 * MIB
    for measured in (busy_bps, busy_again_bps):
        # Generous: TCG may not keep up with the workload, and 128 sampled pages are coarse.
        assert measured >= quiet_bps + 16 * MIB
        assert BUSY_MIB_PER_S * MIB / 4 <= measured <= BUSY_MIB_PER_S * MIB * 2


def test_two_measurements_of_one_guest_at_once_both_succeed_one_after_the_other(lab, guest_factory):
    # QEMU refuses a second calculation while one runs ("already being measured").
    name = guest_factory(host="hv1", memory_mib=128, wait_ticks=1)

    async def twice():
        hv = libvirt_hypervisor(lab, "hv1")
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            rates = await asyncio.gather(hv.measure_dirty_rate(name, 1), hv.measure_dirty_rate(name, 1))
            return rates, loop.time() - started
        finally:
            await hv.close()

    rates, took = asyncio.run(twice())
    assert all(rate >= 0 for rate in rates)
    assert took >= 2.0


def test_an_unknown_guest_is_not_found(lab):
    with pytest.raises(VmNotFound):
        asyncio.run(measure(lab, "hv1", "no-such-guest"))


def test_a_paused_guest_cannot_be_measured(lab, guest_factory):
    import libvirt

    name = guest_factory(host="hv1", memory_mib=128, wait_ticks=1)
    conn = libvirt.open(lab.host("hv1").uri)
    try:
        conn.lookupByName(name).suspend()
        with pytest.raises(MeasurementFailed) as info:
            asyncio.run(measure(lab, "hv1", name))
        assert str(info.value) == f"{name} is not running: only a running guest's dirty rate can be measured"
    finally:
        conn.close()
