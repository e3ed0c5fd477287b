"""A control plane that survives every crash: kill -9 the leading coordinator
(the standby takes over), both coordinators, an agent or one of the three
nats-servers in the middle of a real migration (real libvirtd + QEMU guests,
the real daemons), start it again, and the session still reaches its end
within its deadline, with the guest in exactly one place, never restarted, and
movable again at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ferry.cli.client import FerryClient
from ferry.coordinator import session_steps
from ferry.coordinator.session_history import max_overlap
from ferry.lab.lab import COORDINATOR_ROLES, NATS_SERVERS, Lab, agent_role, coordinator_role, nats_role
from ferry.proto.api import MigrateRequest, SessionsRequest
from ferry.proto.drain import DrainRequest, DrainState, ItemState
from ferry.proto.limits import LimitsRequest
from ferry.proto.session import MigrateOptions, Session, SessionState
from tests.support.guests import assert_moved_intact, client_for
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.lab

S = SessionState
# A 128 MiB guest rewriting 8 MiB a second, copied at 8 MiB/s: the job runs
# for well over ten seconds, long enough to crash something in the middle.
SLOW = MigrateOptions(bandwidth_mib=8)


@contextmanager
def restarted_at_the_end(lab: Lab, *roles: str) -> Iterator[None]:
    """Whatever the test killed runs again afterwards, for the tests that follow."""
    try:
        yield
    finally:
        for role in roles:
            lab.start(role)


async def reach(client: FerryClient, session_id: str, *states: SessionState, timeout: float = 60.0) -> Session:
    async def there():
        session = await client.session(session_id)
        return session if session.state in states else None

    return await eventually(there, timeout=timeout, what=f"session {session_id} in {', '.join(states)}")


async def migrating_with_progress(client: FerryClient, session_id: str) -> Session:
    async def moving():
        session = await client.session(session_id)
        return session if session.state == S.MIGRATING and session.progress and session.progress.data_processed else None

    return await eventually(moving, timeout=60, what=f"session {session_id} migrating with progress")


async def job_ended_on(lab: Lab, guest: str, host: str) -> None:
    """libvirt finished the job on its own: the guest runs on `host` alone."""
    await eventually(
        lambda: asyncio.to_thread(lambda: lab.residency(guest)[guest].running_on == (host,)),
        timeout=120, what=f"{guest} running on {host} after the job ended",
    )


async def leader_role(client: FerryClient) -> str:
    async def leader():
        status = await client.status()
        return status.leader.holder if status.leader is not None and len(status.coordinators) == 2 else None

    return coordinator_role(await eventually(leader, timeout=20, what="a leader and a standby"))


async def wait_new_leader(client: FerryClient, old: str, killed_at: float, timeout: float = 20.0) -> float:
    """Seconds from `killed_at` (wall clock) until a coordinator other than `old`
    took the lease, by the new lease's own start: how long the status polls take
    on a loaded machine is not the takeover."""

    async def other():
        status = await client.status()
        lease = status.leader
        return lease if lease is not None and coordinator_role(lease.holder) != old else None

    lease = await eventually(other, timeout=timeout, what=f"a leader other than {old}")
    return lease.since - killed_at


def within_deadline(session: Session) -> float:
    """Seconds the session may still take: the deadline of the state it is in, from now."""
    return max(session_steps.deadline(session) - time.time(), 0.0) + 30.0


async def move_back_at_once(client: FerryClient, lab: Lab, guest: str, frm: str, to: str) -> None:
    """Nothing holds the VM after a crash: the next move is accepted and completes."""
    again = await client.migrate(MigrateRequest(vm=guest, dest=to))
    ended = await session_end(client, again.id, timeout=120)
    assert ended.state == S.COMPLETED, ended.reason
    assert_moved_intact(lab, guest, to)


async def completes_and_moves_back(client: FerryClient, lab: Lab, guest: str, session: Session) -> None:
    """The session ends `completed` within the deadline of the state it was in
    (`session` as last seen before the crash); the guest runs on hv2 alone, intact,
    and goes back to hv1 at once."""
    ended = await session_end(client, session.id, timeout=within_deadline(session))
    assert ended.state == S.COMPLETED, ended.reason
    assert_moved_intact(lab, guest, "hv2")
    await move_back_at_once(client, lab, guest, "hv2", "hv1")


async def test_leader_killed_while_migrating_the_standby_completes_the_session(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1", dirty_mb=8, wait_ticks=2)
    client = await client_for(lab)
    try:
        leader = await leader_role(client)
        session = await client.migrate(MigrateRequest(vm=guest, dest="hv2", options=SLOW))
        running = await migrating_with_progress(client, session.id)
        with restarted_at_the_end(lab, leader):
            killed_at = time.time()
            assert lab.kill(leader)
            took = await wait_new_leader(client, leader, killed_at)
            assert took < 10, f"the standby took {took:.1f} s to lead"
            await completes_and_moves_back(client, lab, guest, running)
    finally:
        await client.close()


async def test_both_coordinators_killed_while_preparing_complete_the_session_after_restart(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1", wait_ticks=2)
    dest_agent = lab.process(agent_role(lab.host("hv2")))
    assert dest_agent is not None
    client = await client_for(lab)
    try:
        # The destination's agent is frozen: prepare cannot be answered, so the
        # session is certainly `preparing` when the coordinator dies.
        os.kill(dest_agent.pid, signal.SIGSTOP)
        try:
            session = await client.migrate(MigrateRequest(vm=guest, dest="hv2"))
            preparing = await reach(client, session.id, S.PREPARING)
            with restarted_at_the_end(lab, *COORDINATOR_ROLES):
                for role in COORDINATOR_ROLES:
                    assert lab.kill(role)
        finally:
            os.kill(dest_agent.pid, signal.SIGCONT)
        await asyncio.sleep(1)
        for role in COORDINATOR_ROLES:
            lab.start(role)
        await completes_and_moves_back(client, lab, guest, preparing)
    finally:
        await client.close()


async def test_leader_killed_mid_drain_the_standby_leads_and_finishes_the_drain(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guests = [guest_factory(host="hv3", dirty_mb=4, wait_ticks=1) for _ in range(2)]
    client = await client_for(lab)
    try:
        # One migration at a time: while the first moves, the second is queued.
        await client.limits(LimitsRequest(cluster=1, host_bandwidth_mib=8))
        await client.drain(DrainRequest(host="hv3"))

        async def one_queued():
            sessions = [s for s in await client.sessions() if s.drain_host == "hv3" and not s.state.terminal]
            return sessions if any(s.state == S.QUEUED for s in sessions) and any(s.state == S.MIGRATING for s in sessions) else None

        await eventually(one_queued, timeout=60, what="one drain session migrating and one queued")
        leader = await leader_role(client)
        with restarted_at_the_end(lab, leader):
            killed_at = time.time()
            assert lab.kill(leader)
            took = await wait_new_leader(client, leader, killed_at)
            assert took < 10, f"the standby took {took:.1f} s to lead"

            async def drained():
                (current,) = await client.drains("hv3")
                return current if current.state != DrainState.RUNNING else None

            done = await eventually(drained, timeout=240, every=0.5, what="the drain of hv3 ended")
        assert done.state == DrainState.DONE, [(i.vm, i.state, i.reason) for i in done.items]
        assert all(i.state == ItemState.MOVED for i in done.items)
        # This drain's sessions (earlier tests drained hv3 too, under other limits).
        sessions = [s for s in await client.sessions() if s.drain_host == "hv3" and s.created_at >= done.started_at]
        assert sessions and all(s.state.terminal for s in sessions)
        # Across the takeover, the cluster limit of 1 held (from the records alone).
        assert max_overlap(sessions, key=lambda s: "cluster")["cluster"] == 1
        for guest in guests:
            (host,) = lab.residency(guest)[guest].running_on
            assert host != "hv3"
            assert_moved_intact(lab, guest, host)
    finally:
        await client.limits(LimitsRequest(reset=True))
        await client.undrain("hv3")
        await client.close()


@pytest.mark.parametrize("when", ["after 3 s", "after the job ended"])
async def test_source_agent_killed_mid_migration_follows_its_job_after_restart(lab_with_ferry: Lab, guest_factory, when) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1", dirty_mb=8, wait_ticks=2)
    source = agent_role(lab.host("hv1"))
    client = await client_for(lab)
    try:
        session = await client.migrate(MigrateRequest(vm=guest, dest="hv2", options=SLOW))
        running = await migrating_with_progress(client, session.id)
        with restarted_at_the_end(lab, source):
            assert lab.kill(source)
            if when == "after 3 s":
                await asyncio.sleep(3)
            else:
                # libvirt carries the job on without the agent that started it.
                await job_ended_on(lab, guest, "hv2")
            lab.start(source)
            ended = await session_end(client, session.id, timeout=within_deadline(running))
        assert ended.state == S.COMPLETED, ended.reason
        assert_moved_intact(lab, guest, "hv2")
        started = [line for line in lab.host("hv1").agent_log.read_text().splitlines()
                   if session.id in line and '"migration_started"' in line]
        assert len(started) == 1, "one job for the session, never a second after the restart"
        await move_back_at_once(client, lab, guest, "hv2", "hv1")
    finally:
        await client.close()


async def test_destination_agent_killed_across_the_end_of_a_storage_copy(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1", dirty_mb=4, disk="local", disk_size_mib=32, wait_ticks=2)
    dest = agent_role(lab.host("hv2"))
    client = await client_for(lab)
    try:
        session = await client.migrate(MigrateRequest(vm=guest, dest="hv2", options=SLOW))
        running = await migrating_with_progress(client, session.id)
        assert running.copy_disks, "the local disk is copied along"
        with restarted_at_the_end(lab, dest):
            assert lab.kill(dest)
            await job_ended_on(lab, guest, "hv2")
            await asyncio.sleep(2)
            lab.start(dest)
            ended = await session_end(client, session.id, timeout=within_deadline(running))
        assert ended.state == S.COMPLETED, ended.reason
        assert_moved_intact(lab, guest, "hv2")
    finally:
        await client.close()


async def test_one_nats_server_stopped_mid_migration_loses_nothing(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1", dirty_mb=8, wait_ticks=2)
    client = await client_for(lab)
    try:
        leader = await leader_role(client)
        session = await client.migrate(MigrateRequest(vm=guest, dest="hv2", options=SLOW))
        running = await migrating_with_progress(client, session.id)
        # The server the leader uses goes away, and stays away until the session ends.
        members = (await client.status()).coordinators
        used = next(m.server for m in members if coordinator_role(m.name) == leader)
        role = nats_role(next(name for name, url in zip(NATS_SERVERS, lab.nats_urls) if url.endswith(used)))
        urls = lab.nats_urls
        with restarted_at_the_end(lab, role):
            assert lab.kill(role)
            await client.close()  # the CLI's client does not reconnect; the daemons do
            client = await client_for(lab)
            ended = await session_end(client, session.id, timeout=within_deadline(running))
            assert ended.state == S.COMPLETED, ended.reason
            assert_moved_intact(lab, guest, "hv2")
            status = await client.status()
            assert status.buckets and all(b.replicas == 3 for b in status.buckets), status.buckets
            assert [s.id for s in await client.sessions(SessionsRequest(vm=guest))] == [session.id]
        assert lab.nats_urls == urls, "the same ports (and stores) after the restart"
        await move_back_at_once(client, lab, guest, "hv2", "hv1")
    finally:
        await client.close()
