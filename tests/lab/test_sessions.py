"""Migration sessions end to end: the real CLI, coordinator and agents, real
libvirtd + QEMU guests in the lab, a real nats-server. Every test checks that
the guest runs in exactly one place afterwards and never restarted."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import msgspec
import nats
import pytest

from ferry.coordinator.agents import AgentClient
from ferry.lab.lab import Lab
from ferry.lab.layout import IMAGES_PATH
from ferry.lab.nats_security import LAB_TOOLS
from ferry.proto import subjects
from ferry.proto.agent import JobsRequest, SessionProgress, SessionUpdate
from ferry.proto.agent import MigrateRequest as AgentMigrateRequest
from ferry.proto.api import MigrateRequest
from ferry.proto.errors import FerryError
from ferry.proto.session import MigrateOptions, SessionState
from ferry.runtime.connection import identity_options
from ferry.runtime.identity import Role
from tests.support.disks import assert_disk_holds
from tests.support.ferry_cli import ferry
from tests.support.guests import (
    assert_never_restarted,
    assert_runs_only_on,
    client_for,
    wait_ticking_on,
)
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.lab

MIB = 1024 * 1024










def test_migrate_wait_moves_a_busy_guest_to_a_host_ferry_chooses(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1", memory_mib=256, dirty_mb=16, wait_ticks=3)

    result = ferry(lab, "migrate", guest, "--wait", "--json")

    assert result.code == 0, result.stderr
    session = result.session()
    assert session.state == SessionState.COMPLETED
    assert session.source == "hv1" and session.dest in ("hv2", "hv3")
    assert not session.dest_requested
    assert [t.state for t in session.history] == ["queued", "preparing", "migrating", "completed"]
    assert session.options.tls and session.encryption == "tls"
    assert session.outcome is not None and session.outcome.downtime_ms > 0 and session.outcome.total_time_ms > 0
    wait_ticking_on(lab, guest, session.dest)
    assert_runs_only_on(lab, guest, session.dest)
    assert_never_restarted(lab, guest)
    # The record keeps what happened, for `ferry session ID`.
    shown = ferry(lab, "session", session.id)
    assert shown.code == 0 and "completed" in shown.stdout and "downtime" in shown.stdout


async def test_bandwidth_limit_holds_and_raising_it_speeds_the_migration_up(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    # The workload keeps 24 MiB of memory changing, so at 8 MiB/s the copy runs
    # long enough to be measured; at a higher speed it converges.
    guest = guest_factory(host="hv1", memory_mib=256, dirty_mb=24, wait_ticks=3)
    # (seconds into the job, bytes sent), both from one job-statistics read: the
    # publish time would add the jitter of a busy host's libvirt calls.
    samples: list[tuple[float, int]] = []
    decoder = msgspec.json.Decoder(SessionUpdate)
    client = await client_for(lab)
    try:
        session = await client.migrate(MigrateRequest(vm=guest, dest="hv2", options=MigrateOptions(bandwidth_mib=8)))

        async def on_update(msg) -> None:
            update = decoder.decode(msg.data)
            if isinstance(update, SessionProgress):
                samples.append((update.progress.elapsed_ms / 1000, update.progress.data_processed))

        await client._nc.subscribe(subjects.host_session("hv1", session.id), cb=on_update)
        await asyncio.sleep(6.0)
        limited = list(samples)
        assert len(limited) >= 6, f"too few progress samples: {limited}"
        # Skip the first sample: the job's start (connection, zero pages) is not steady state.
        (t0, b0), (t1, b1) = limited[1], limited[-1]
        rate_limited = (b1 - b0) / (t1 - t0) / MIB
        # QEMU 10 sends somewhat more than max-bandwidth over a few seconds (9.0 MiB/s
        # at 8 measured here, from its own byte and time counters); without the cap
        # the same guest moves at over 100 MiB/s.
        assert rate_limited <= 8 * 1.25, f"measured {rate_limited:.2f} MiB/s with an 8 MiB/s limit"
        assert rate_limited >= 8 * 0.5, f"measured only {rate_limited:.2f} MiB/s"

        raised_at, processed_at_raise = time.time(), limited[-1][1]
        changed = await asyncio.to_thread(ferry, lab, "bandwidth", session.id, "64")
        assert changed.code == 0, changed.stderr

        final = await session_end(client, session.id, timeout=120)
        assert final.state == SessionState.COMPLETED, final.reason
        assert final.options.bandwidth_mib == 64
        finished_at = final.history[-1].at
        moved_after = final.outcome.data_transferred - processed_at_raise
        rate_raised = moved_after / (finished_at - raised_at) / MIB
        assert rate_raised > 8 * 1.5, f"after raising to 64 MiB/s: {rate_raised:.2f} MiB/s"
    finally:
        await client.close()
    assert_runs_only_on(lab, guest, "hv2")
    assert_never_restarted(lab, guest)


def test_tls_by_default_and_copy_storage_moves_a_local_disk_unchanged(lab_with_ferry: Lab, guest_factory, tmp_path: Path) -> None:
    lab = lab_with_ferry
    pattern = tmp_path / "pattern.raw"
    pattern.write_bytes(random.Random(20261125).randbytes(8 << 20))
    guest = guest_factory(host="hv1", disk="local", disk_size_mib=32, disk_content=pattern, wait_ticks=3)
    source_image = lab.host("hv1").outside(IMAGES_PATH / f"{guest}.qcow2")
    dest_image = lab.host("hv3").outside(IMAGES_PATH / f"{guest}.qcow2")

    result = ferry(lab, "migrate", guest, "--to", "hv3", "--copy-storage", "--wait", "--json")

    assert result.code == 0, result.stderr
    session = result.session()
    assert session.state == SessionState.COMPLETED
    assert session.options.tls, "TLS is on unless --no-tls"
    assert session.encryption == "tls", "the source reports what it asked libvirt for"
    assert session.copy_disks == ["vda"]
    wait_ticking_on(lab, guest, "hv3")
    assert_runs_only_on(lab, guest, "hv3")
    assert_never_restarted(lab, guest)
    # The source removed its copy only after the destination confirmed.
    assert not source_image.exists()
    assert_disk_holds(lab, "hv3", guest, pattern, dest_image)


def test_no_tls_is_refused_with_tls_required_by_an_agent_with_the_default_config(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv2")
    result = ferry(lab, "migrate", guest, "--to", "hv1", "--no-tls", "--wait", "--json")
    assert result.code == 1
    session = result.session()
    assert session.state == SessionState.FAILED and session.code == "tls_required", session.reason
    assert "require_tls = false" in session.reason
    assert session.encryption == ""
    assert_runs_only_on(lab, guest, "hv2")
    assert_never_restarted(lab, guest)


def test_no_tls_runs_unencrypted_where_the_source_allows_it_and_the_record_says_so(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv2")
    # An operator's deliberate choice on a trusted network, in the source's own config.
    lab.restart_agent("hv2", migration={"require_tls": False})
    try:
        result = ferry(lab, "migrate", guest, "--to", "hv1", "--no-tls", "--wait", "--json")
    finally:
        lab.restart_agent("hv2")
    assert result.code == 0, result.stderr
    session = result.session()
    assert session.options.tls is False and session.encryption == "none"
    assert_runs_only_on(lab, guest, "hv1")


async def test_a_migrate_request_naming_a_qemu_tcp_peer_is_refused_by_the_agent(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1")
    # Straight to the agent's migrate subject (where only coordinators may publish), naming
    # hv2's libvirtd over plain TCP: refused before anything is dialled (the lab's
    # libvirtds do not even listen on TCP).
    nc = await nats.connect(servers=lab.nats_urls, **identity_options(lab.nats_settings(LAB_TOOLS, Role.COORDINATOR)))
    try:
        forged = AgentMigrateRequest(session_id="forged01", vm=guest, dest="hv2", peer_uri=lab.host("hv2").peer_uri_tcp)
        with pytest.raises(FerryError) as refused:
            await AgentClient(nc, timeout=10.0).migrate("hv1", forged)
    finally:
        await nc.close()
    assert refused.value.code == "peer_refused"
    assert "its scheme qemu+tcp is not one of the allowed peer schemes" in refused.value.message
    assert_runs_only_on(lab, guest, "hv1")
    assert_never_restarted(lab, guest)


async def test_cancel_mid_migration_leaves_the_guest_on_its_source_and_nothing_on_the_destination(
    lab_with_ferry: Lab, guest_factory
) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1", memory_mib=256, dirty_mb=16, disk="local", disk_size_mib=32, wait_ticks=3)
    dest_image = lab.host("hv2").outside(IMAGES_PATH / f"{guest}.qcow2")
    client = await client_for(lab)
    try:
        # 4 MiB/s against 16 MiB/s of dirtying: this migration would never end by itself.
        session = await client.migrate(
            MigrateRequest(vm=guest, dest="hv2", options=MigrateOptions(bandwidth_mib=4, storage="copy"))
        )

        async def copying():
            s = await client.session(session.id)
            return s if s.state == SessionState.MIGRATING and s.progress and s.progress.data_processed else None

        await eventually(copying, timeout=60, every=0.25, what="copying with progress")
        assert dest_image.exists(), "the destination pre-created the image for the copy"
        # The destination answers for its incoming job, although libvirt keeps the
        # job's figures to the source: a coordinator taking over must hear both sides.
        nc = await nats.connect(servers=lab.nats_urls, **identity_options(lab.nats_settings(LAB_TOOLS, Role.COORDINATOR)))
        try:
            incoming = await AgentClient(nc, timeout=10.0).jobs("hv2", JobsRequest(session_ids=[session.id], vms=[guest]))
        finally:
            await nc.close()
        assert [(j.session_id, j.job_running) for j in incoming.jobs] == [(session.id, True)]

        cancelled = await asyncio.to_thread(ferry, lab, "cancel", session.id, "--wait")
        assert cancelled.code == 0, cancelled.stdout + cancelled.stderr
        final = await client.session(session.id)
    finally:
        await client.close()
    assert final.state == SessionState.CANCELLED
    assert final.code == "cancelled"
    wait_ticking_on(lab, guest, "hv1")
    assert_runs_only_on(lab, guest, "hv1")
    assert_never_restarted(lab, guest)
    assert not dest_image.exists(), "the destination removed the image it prepared"
    assert lab.residency(guest)[guest].defined_on == ("hv1",)


def test_a_destination_without_enough_memory_declines_with_no_capacity(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1")
    # hv3 keeps more memory free than this machine has: any VM is too big for it.
    lab.restart_agent("hv3", migration={"memory_margin_mib": 1 << 20})
    try:
        result = ferry(lab, "migrate", guest, "--to", "hv3", "--wait", "--json")
    finally:
        lab.restart_agent("hv3")
    assert result.code == 1
    session = result.session()
    assert session.state == SessionState.FAILED
    assert session.code == "no_capacity"
    assert "hv3 declined" in session.reason and "MiB" in session.reason
    assert "no_capacity" in result.stderr
    assert_runs_only_on(lab, guest, "hv1")
    assert_never_restarted(lab, guest)


def test_a_named_destination_that_is_lost_is_refused_with_its_reason(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1")
    lab.stop_agent("hv3")
    try:
        deadline = time.monotonic() + 30
        while '"state": "lost"' not in ferry(lab, "hosts", "--json").stdout:
            assert time.monotonic() < deadline, "hv3 never became lost"
            time.sleep(0.5)
        result = ferry(lab, "migrate", guest, "--to", "hv3", "--wait")
    finally:
        lab.restart_agent("hv3")
    assert result.code == 1
    assert result.stderr.startswith("ferry: host_lost: the destination hv3 is lost")
    assert "Traceback" not in result.stderr
    assert_runs_only_on(lab, guest, "hv1")


def test_an_unknown_vm_gets_a_clear_error(lab_with_ferry: Lab) -> None:
    result = ferry(lab_with_ferry, "migrate", "no-such-vm", "--wait")
    assert result.code == 1
    assert result.stderr.strip() == "ferry: unknown_vm: no host reports a VM named no-such-vm"


def test_bad_input_gets_a_sentence(lab_with_ferry: Lab) -> None:
    result = ferry(lab_with_ferry, "migrate", "bad.name", "--bandwidth", "-3")
    assert result.code == 1
    assert result.stderr.startswith("ferry: bad_request: invalid migrate request")
    assert "Traceback" not in result.stderr


async def test_a_second_session_for_the_same_vm_is_refused(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv2", memory_mib=256, dirty_mb=16, wait_ticks=3)
    client = await client_for(lab)
    try:
        first = await client.migrate(MigrateRequest(vm=guest, dest="hv1", options=MigrateOptions(bandwidth_mib=4)))
        second = await asyncio.to_thread(ferry, lab, "migrate", guest, "--to", "hv3")
        assert second.code == 1
        assert second.stderr.strip() == f"ferry: conflict: {guest} is already being moved by session {first.id}"
        await client.cancel(first.id)
        final = await session_end(client, first.id, timeout=60)
    finally:
        await client.close()
    assert final.state == SessionState.CANCELLED
    assert_runs_only_on(lab, guest, "hv2")
    assert_never_restarted(lab, guest)
