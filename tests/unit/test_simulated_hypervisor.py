import asyncio
import uuid

import pytest

from ferry.agent.config import SimulatedHost, SimulatedVm
from ferry.agent.hypervisor import (
    MeasurementFailed,
    MigrationFailed,
    MigrationPlan,
    VmNotFound,
)
from ferry.agent.hypervisor.simulated import SimulatedHypervisor
from ferry.agent.progress import progress_from_stats
from ferry.proto.agent import VmDescription
from ferry.proto.host import VmInfo, VmState

MIB = 1024 * 1024
# 640 MiB/s moves 32 MiB per 50 ms step: a 32 MiB guest migrates in one step.
SPEC = SimulatedHost(
    cpus=4, memory_mib=4096, reserved_mib=512, cpu_model="EPYC-Rome", migration_mib_per_s=640,
    vms=[SimulatedVm("g1", vcpus=2, memory_mib=32, cpu_model="EPYC-Rome"), SimulatedVm("plain", memory_mib=64)],
)
# A 1 ms max downtime: the guest pauses to finish only when (almost) nothing is left,
# so the tests see the passes themselves.
PLAN = MigrationPlan(peer_uri="qemu+tls://hv2/system", max_downtime_ms=1)
SLOW = MigrationPlan(peer_uri="qemu+tls://hv2/system", bandwidth_mib=16, max_downtime_ms=1)  # 0.8 MiB per step: 64 MiB takes 4 s


def source() -> SimulatedHypervisor:
    return SimulatedHypervisor("hv1", SPEC)


def dest(cpu_model="EPYC-Rome") -> SimulatedHypervisor:
    return SimulatedHypervisor("hv2", SimulatedHost(cpus=4, memory_mib=4096, reserved_mib=512, cpu_model=cpu_model))


async def first_step(hv: SimulatedHypervisor, name: str) -> dict:
    """The job's statistics once it has moved some memory."""
    for _ in range(100):
        stats = await hv.job_stats(name)
        if stats and stats["data_processed"] > 0:
            return stats
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name}'s migration never moved any memory")


async def test_describe_vm_reports_size_arch_and_cpu_model():
    description = await source().describe_vm("g1")
    assert description == VmDescription(
        name="g1",
        uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, "hv1/g1")),
        vcpus=2,
        memory_mib=32,
        arch="x86_64",
        virt_type="simulated",
        cpu_xml="<cpu><model>EPYC-Rome</model></cpu>",
        running=True,
    )


async def test_a_vm_without_a_cpu_model_has_no_cpu_element():
    assert (await source().describe_vm("plain")).cpu_xml == ""


async def test_describing_an_unknown_vm_raises_vm_not_found():
    with pytest.raises(VmNotFound):
        await source().describe_vm("nope")


@pytest.mark.parametrize(
    "dest_model, problem",
    [
        ("EPYC-Rome", None),
        ("Haswell", "this host has CPU model Haswell, the guest needs EPYC-Rome"),
    ],
)
async def test_cpu_incompatibility_compares_the_guest_model_with_the_hosts(dest_model, problem):
    description = await source().describe_vm("g1")
    assert await dest(dest_model).cpu_incompatibility(description) == problem


async def test_a_guest_without_a_cpu_model_runs_anywhere():
    description = await source().describe_vm("plain")
    assert await dest("Haswell").cpu_incompatibility(description) is None


async def test_a_finished_migration_removes_the_vm_and_keeps_its_statistics():
    hv = source()
    await asyncio.wait_for(hv.migrate("g1", PLAN), timeout=1.0)
    assert [v.name for v in (await hv.list_vms()).vms] == ["plain"]
    assert await hv.vm_state("g1") is None
    assert await hv.job_stats("g1") is None
    completed = await hv.completed_job_stats("g1")
    assert completed["data_processed"] == 32 * MIB and completed["downtime"] == 5
    assert completed["time_elapsed"] >= 40


async def test_a_finished_migration_frees_the_memory_on_the_source():
    hv = source()
    before = (await hv.node_facts()).memory_free_mib
    await asyncio.wait_for(hv.migrate("g1", PLAN), timeout=1.0)
    assert (await hv.node_facts()).memory_free_mib == before + 32


async def test_migrating_an_unknown_vm_raises_vm_not_found():
    with pytest.raises(VmNotFound):
        await source().migrate("nope", PLAN)


async def test_no_job_statistics_without_a_job():
    hv = source()
    assert await hv.job_stats("g1") is None
    assert await hv.completed_job_stats("g1") == {}


async def test_job_statistics_during_a_migration_are_libvirt_shaped():
    hv = source()
    task = asyncio.create_task(hv.migrate("plain", SLOW))
    try:
        stats = await first_step(hv, "plain")
        assert stats["data_total"] == 64 * MIB
        assert stats["data_processed"] + stats["data_remaining"] == 64 * MIB
        assert 0 < stats["data_processed"] < 64 * MIB
        assert stats["memory_bps"] == 16 * MIB
        assert stats["memory_iteration"] == 1
        assert stats["time_elapsed"] >= 0
        progress = progress_from_stats(stats)
        assert progress.bandwidth_bps == 16 * MIB and progress.data_total == 64 * MIB
        assert await hv.vm_state("plain") == VmState.RUNNING  # still on the source while it runs
    finally:
        await hv.abort_job("plain")
        with pytest.raises(MigrationFailed):
            await task


async def test_abort_fails_the_migration_and_leaves_the_vm_on_the_source():
    hv = source()
    task = asyncio.create_task(hv.migrate("plain", SLOW))
    await first_step(hv, "plain")
    assert await hv.abort_job("plain") is True
    with pytest.raises(MigrationFailed) as info:
        await asyncio.wait_for(task, timeout=1.0)
    assert "aborted" in str(info.value)
    assert await hv.vm_state("plain") == VmState.RUNNING
    assert await hv.job_stats("plain") is None
    assert await hv.completed_job_stats("plain") == {}
    assert await hv.abort_job("plain") is False  # nothing left to abort


async def test_aborting_without_a_job_does_nothing():
    hv = source()
    assert await hv.abort_job("g1") is False
    assert await hv.vm_state("g1") == VmState.RUNNING


async def test_a_second_migration_of_the_same_vm_is_refused_while_the_first_runs():
    hv = source()
    task = asyncio.create_task(hv.migrate("plain", SLOW))
    await first_step(hv, "plain")
    with pytest.raises(MigrationFailed) as info:
        await hv.migrate("plain", PLAN)
    assert str(info.value) == "plain is already migrating"
    assert await hv.job_stats("plain") is not None  # the first job goes on
    await hv.abort_job("plain")
    with pytest.raises(MigrationFailed):
        await task


async def test_set_bandwidth_changes_the_speed_of_a_running_job():
    hv = source()
    task = asyncio.create_task(hv.migrate("plain", SLOW))
    assert (await first_step(hv, "plain"))["memory_bps"] == 16 * MIB
    await hv.set_bandwidth("plain", 0)  # unlimited: the host's 640 MiB/s, 32 MiB per step
    await asyncio.wait_for(task, timeout=1.0)  # at 16 MiB/s it would need 4 s
    assert await hv.vm_state("plain") is None
    assert (await hv.completed_job_stats("plain"))["data_processed"] == 64 * MIB


async def test_set_bandwidth_slows_a_running_job():
    hv = source()
    task = asyncio.create_task(hv.migrate("plain", PLAN))
    await asyncio.sleep(0)  # the job exists before its first step
    await hv.set_bandwidth("plain", 8)
    stats = await first_step(hv, "plain")
    assert stats["memory_bps"] == 8 * MIB
    assert stats["data_processed"] % int(8 * MIB * 0.05) == 0  # whole steps at 8 MiB/s
    await hv.abort_job("plain")
    with pytest.raises(MigrationFailed):
        await task


async def test_a_limit_above_the_hosts_speed_is_capped_at_the_host_speed():
    hv = SimulatedHypervisor("hv1", SimulatedHost(migration_mib_per_s=640, vms=[SimulatedVm("big", memory_mib=6400)]))
    task = asyncio.create_task(hv.migrate("big", MigrationPlan(peer_uri="x", bandwidth_mib=10_000)))
    assert (await first_step(hv, "big"))["memory_bps"] == 640 * MIB
    await hv.abort_job("big")
    with pytest.raises(MigrationFailed):
        await task


async def test_set_bandwidth_without_a_job_does_nothing():
    hv = source()
    await hv.set_bandwidth("g1", 10)
    assert await hv.job_stats("g1") is None


async def test_adopt_incoming_adds_the_vm_running_with_its_cpu_model():
    description = await source().describe_vm("g1")
    hv = dest()
    free_before = (await hv.node_facts()).memory_free_mib
    await hv.adopt_incoming(description)
    assert await hv.vm_state("g1") == VmState.RUNNING
    assert await hv.describe_vm("g1") == description
    assert (await hv.node_facts()).memory_free_mib == free_before - 32
    completed = await hv.completed_job_stats("g1")
    assert completed["data_processed"] == 32 * MIB and completed["downtime"] == 5


async def test_adopting_a_vm_the_host_already_has_changes_nothing():
    hv = dest()
    first = VmDescription(name="g1", uuid="u-1", vcpus=1, memory_mib=256)
    await hv.adopt_incoming(first)
    await hv.adopt_incoming(VmDescription(name="g1", uuid="u-2", vcpus=8, memory_mib=8192))
    (vm,) = (await hv.list_vms()).vms
    assert (vm.uuid, vm.vcpus, vm.memory_mib) == ("u-1", 1, 256)


async def test_a_vm_moves_from_one_simulated_host_to_another():
    src, dst = source(), dest()
    description = await src.describe_vm("g1")
    assert await dst.cpu_incompatibility(description) is None
    await asyncio.wait_for(src.migrate("g1", PLAN), timeout=1.0)
    await dst.adopt_incoming(description)
    assert await src.vm_state("g1") is None
    assert await dst.vm_state("g1") == VmState.RUNNING
    assert (await dst.describe_vm("g1")).uuid == description.uuid


# Dirty rates against the 640 MiB/s copy (32 MiB per step): "warm" dirties 16 MiB per
# step and converges; "busy" dirties 64 MiB per step and never does.
DIRTY_SPEC = SimulatedHost(
    migration_mib_per_s=640,
    vms=[
        SimulatedVm("quiet", memory_mib=64),
        SimulatedVm("warm", memory_mib=64, dirty_mib_per_s=320),
        SimulatedVm("busy", memory_mib=64, dirty_mib_per_s=1280),
    ],
)


def dirty_source() -> SimulatedHypervisor:
    return SimulatedHypervisor("hv1", DIRTY_SPEC)


async def test_measuring_returns_the_configured_dirty_rate_after_the_time_asked():
    hv = dirty_source()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await hv.measure_dirty_rate("warm", 0.1) == 320 * MIB
    assert loop.time() - started >= 0.1
    assert await hv.measure_dirty_rate("quiet", 0.01) == 0


async def test_measuring_an_unknown_vm_raises_vm_not_found():
    with pytest.raises(VmNotFound):
        await dirty_source().measure_dirty_rate("nope", 0.01)


async def test_measuring_a_guest_that_is_not_running_fails_with_a_sentence():
    hv = dirty_source()
    hv.add_vm(VmInfo(name="asleep", uuid="u-1", vcpus=1, memory_mib=64, state=VmState.PAUSED), dirty_mib_per_s=5)
    with pytest.raises(MeasurementFailed) as info:
        await hv.measure_dirty_rate("asleep", 0.01)
    assert str(info.value) == "asleep is not running: only a running guest's dirty rate can be measured"


@pytest.mark.parametrize("seconds", [0, -1, 61])
async def test_measuring_outside_0_to_60_seconds_is_refused(seconds):
    with pytest.raises(ValueError):
        await dirty_source().measure_dirty_rate("warm", seconds)


async def test_a_guest_dirtying_slower_than_the_copy_converges_after_copying_more_than_its_memory():
    # Step 1: 32 sent, 32 + 16 left. Step 2: 32 sent, 16 + 16 left, second pass.
    # Step 3: the last 32 MiB, nothing left.
    hv = dirty_source()
    await asyncio.wait_for(hv.migrate("warm", PLAN), timeout=1.0)
    assert await hv.vm_state("warm") is None
    completed = await hv.completed_job_stats("warm")
    assert completed["data_processed"] == 96 * MIB
    assert completed["memory_iteration"] == 2


async def test_a_quiet_guest_copies_its_memory_once():
    hv = dirty_source()
    await asyncio.wait_for(hv.migrate("quiet", PLAN), timeout=1.0)
    completed = await hv.completed_job_stats("quiet")
    assert (completed["data_processed"], completed["memory_iteration"]) == (64 * MIB, 1)


async def test_a_guest_dirtying_faster_than_the_copy_never_converges_and_can_be_aborted():
    hv = dirty_source()
    task = asyncio.create_task(hv.migrate("busy", PLAN))
    stats = None
    for _ in range(200):
        stats = await hv.job_stats("busy")
        if stats and stats["memory_iteration"] >= 4:
            break
        await asyncio.sleep(0.01)
    assert stats is not None and stats["memory_iteration"] >= 4, stats
    assert not task.done()
    # It cannot dirty more than its memory: the whole 64 MiB is left after each step.
    assert stats["data_remaining"] == 64 * MIB
    assert stats["data_processed"] >= 4 * 32 * MIB
    assert stats["memory_dirty_rate"] * stats["memory_page_size"] == 1280 * MIB
    assert progress_from_stats(stats).dirty_rate_bps == 1280 * MIB
    assert await hv.abort_job("busy") is True
    with pytest.raises(MigrationFailed):
        await asyncio.wait_for(task, timeout=1.0)
    assert await hv.vm_state("busy") == VmState.RUNNING


async def test_a_busy_guest_converges_once_it_dirties_slower_than_the_copy():
    hv = dirty_source()
    task = asyncio.create_task(hv.migrate("busy", PLAN))
    await first_step(hv, "busy")
    hv.set_dirty_rate("busy", 0)  # as if throttled to a standstill
    await asyncio.wait_for(task, timeout=1.0)
    assert await hv.vm_state("busy") is None


async def test_a_guest_converges_once_its_bandwidth_limit_is_lifted_above_its_dirty_rate():
    hv = dirty_source()
    # 160 MiB/s copies 8 MiB per step; "warm" dirties 16 MiB per step.
    task = asyncio.create_task(hv.migrate("warm", MigrationPlan(peer_uri="x", bandwidth_mib=160, max_downtime_ms=1)))
    for _ in range(200):
        stats = await hv.job_stats("warm")
        if stats and stats["data_remaining"] == 64 * MIB and stats["data_processed"] > 64 * MIB:
            break  # dirtied back up to its whole memory, after copying more than that
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the limited migration should not have shrunk what is left")
    assert not task.done()
    await hv.set_bandwidth("warm", 0)  # the host's 640 MiB/s: 32 MiB per step
    await asyncio.wait_for(task, timeout=1.0)
    assert await hv.vm_state("warm") is None


async def test_a_vm_leaving_while_measured_is_not_found():
    hv = dirty_source()
    measuring = asyncio.create_task(hv.measure_dirty_rate("quiet", 0.2))
    await asyncio.wait_for(hv.migrate("quiet", PLAN), timeout=1.0)
    with pytest.raises(VmNotFound):
        await measuring


def test_a_simulated_vm_is_quiet_unless_told_otherwise():
    assert SimulatedVm("g").dirty_mib_per_s == 0
