import asyncio
import uuid

import pytest

from agent.config import SimulatedHost, SimulatedVm
from agent.hypervisor import MigrationFailed, MigrationPlan, VmNotFound
from agent.hypervisor.simulated import SimulatedHypervisor
from agent.progress import progress_from_stats
from proto.agent import VmDescription
from proto.host import VmState

MIB = 1024 * 1024
# 640 MiB/s moves 32 MiB per 50 ms step: a 32 MiB guest migrates in one step.
SPEC = SimulatedHost(
    cpus=4, memory_mib=4096, reserved_mib=512, cpu_model="EPYC-Rome", migration_mib_per_s=640,
    vms=[SimulatedVm("g1", vcpus=2, memory_mib=32, cpu_model="EPYC-Rome"), SimulatedVm("plain", memory_mib=64)],
)
PLAN = MigrationPlan(peer_uri="qemu+tls://hv2/system")
SLOW = MigrationPlan(peer_uri="qemu+tls://hv2/system", bandwidth_mib=16)  # 0.8 MiB per step: 64 MiB takes 4 s


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
    assert [v.name for v in await hv.list_vms()] == ["plain"]
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
    (vm,) = await hv.list_vms()
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
