"""Two coordinators, one leader: real processes and real nats-servers, on the
simulated hypervisor backend. The lab (tests/lab/test_leadership_lab.py) shows
the same with real guests."""

import asyncio
import signal
import time

import pytest

from ferry.cli.client import FerryClient
from ferry.coordinator.session_history import max_overlap
from ferry.lab.processes import cpu_seconds
from ferry.proto.api import MigrateRequest
from ferry.proto.drain import DrainRequest, DrainState
from ferry.proto.leader import Role
from ferry.proto.limits import LimitsRequest
from ferry.proto.session import MigrateOptions, SessionState
from tests.support.cluster import CoordinatorEvents, wait_hosts_up
from tests.support.processes import coordinator_toml, simulated_agent_toml
from tests.support.secured import settings_for
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.integration

NAMES = ("c1", "c2")


def start_coordinators(daemons, urls, extra: str = "") -> None:
    for name in NAMES:
        daemons.start(name, "ferry-coordinator", coordinator_toml(urls, name=name) + extra)


async def client_of(urls: str | list[str], via: str = "") -> FerryClient:
    servers = [urls] if isinstance(urls, str) else urls
    return await FerryClient.connect(settings_for(servers, request_timeout=5.0), via=via)


async def settled_leader(client: FerryClient) -> str:
    """The leader, once both coordinators have announced themselves."""

    async def probe():
        status = await client.status()
        names = {m.name for m in status.coordinators}
        return status.leader.holder if status.leader is not None and names == set(NAMES) else None

    return await eventually(probe, timeout=20, what="a leader and two coordinators")


async def test_the_standby_takes_over_a_killed_leader_and_announces_it(daemons, nats_server, tmp_path):
    start_coordinators(daemons, nats_server.url)
    for host in ("a", "b"):
        daemons.start(host, "ferry-agent", simulated_agent_toml(host, nats_server.url, tmp_path, vms=[(f"{host}-vm", 1, 256)]))
    events = await CoordinatorEvents().start(nats_server.url)
    async with await client_of(nats_server.url) as client:
        await wait_hosts_up(client, ["a", "b"])
        leader = await settled_leader(client)
        standby = next(n for n in NAMES if n != leader)
        async with await client_of(nats_server.url, via=standby) as through_standby:
            status = await through_standby.status()
            assert status.answered_by == standby and status.role == Role.STANDBY
            assert {m.name: m.role for m in status.coordinators} == {leader: Role.LEADER, standby: Role.STANDBY}
            async def warm():
                hosts = await through_standby.hosts()
                return hosts if {h.host for h in hosts.hosts} == {"a", "b"} else None

            # A standby keeps its registry warm (from its own first heartbeats on).
            hosts = await eventually(warm, timeout=10, what="the standby's registry holding a and b")
            assert hosts.leader == leader and hosts.answered_by == standby

            # The standby stays idle: no loop spins while it waits.
            pid = daemons.procs[standby].pid
            before, started = cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(5)
            share = (cpu_seconds(pid) - before) / (time.monotonic() - started)
            assert share < 0.15, f"the standby used {share:.0%} of a core while idle"

            killed_at = time.monotonic()
            daemons.kill(leader)

            async def taken_over():
                status = await through_standby.status()
                return status.leader is not None and status.leader.holder == standby and status.role == Role.LEADER

            await eventually(taken_over, timeout=15, what=f"{standby} leading")
            took = time.monotonic() - killed_at
            assert took < 10, f"the takeover took {took:.1f} s"
            # Writes work through the new leader at once (the client rides out the gap).
            session = await through_standby.migrate(MigrateRequest(vm="a-vm", dest="b"))
            assert (await session_end(through_standby, session.id)).state == SessionState.COMPLETED

    async def elected():
        return [e for e in events.tagged("leader_elected") if e.leader == standby]

    (event,) = await eventually(elected, timeout=5, what="leader_elected")
    assert event.previous == leader and "lapsed" in event.reason
    await events.close()


async def test_with_the_cluster_limit_at_one_two_coordinators_never_run_two_migrations(daemons, nats_server, tmp_path):
    start_coordinators(daemons, nats_server.url, "[drain]\nretry_delay = 0.5\n")
    # 128 MiB/s: each move takes a few seconds, so overlaps would show.
    daemons.start("src", "ferry-agent", simulated_agent_toml(
        "src", nats_server.url, tmp_path, vms=[(f"d{i}", 1, 256) for i in range(3)], migration_mib_per_s=128))
    daemons.start("m", "ferry-agent", simulated_agent_toml(
        "m", nats_server.url, tmp_path, vms=[(f"m{i}", 1, 256) for i in range(3)], migration_mib_per_s=128))
    daemons.start("big", "ferry-agent", simulated_agent_toml(
        "big", nats_server.url, tmp_path, vms=[("slow", 1, 8192)], migration_mib_per_s=64))
    daemons.start("dst", "ferry-agent", simulated_agent_toml("dst", nats_server.url, tmp_path, migration_mib_per_s=128))
    async with await client_of(nats_server.url) as any_client:
        await wait_hosts_up(any_client, ["src", "m", "big", "dst"])
        leader = await settled_leader(any_client)
        standby = next(n for n in NAMES if n != leader)
        clients = {name: await client_of(nats_server.url, via=name) for name in NAMES}
        try:
            # A limit change through the standby is in force everywhere.
            changed = await clients[standby].limits(LimitsRequest(cluster=1))
            assert changed.limits.cluster == 1 and changed.source == "runtime"
            for name in NAMES:
                assert (await clients[name].limits()).limits.cluster == 1

            # Moves through both coordinators, and a drain through the standby.
            moves = [
                await clients[NAMES[i % 2]].migrate(MigrateRequest(vm=f"m{i}", dest="dst")) for i in range(3)
            ]
            drained = await clients[standby].drain(DrainRequest(host="src"))
            assert drained.drain.state == DrainState.RUNNING
            for name in NAMES:
                assert next(h for h in (await clients[name].hosts()).hosts if h.host == "src").draining

            # A cancel through the standby stops a session the leader runs.
            slow = await clients[leader].migrate(MigrateRequest(vm="slow", dest="dst", options=MigrateOptions(priority=100)))

            async def migrating():
                return (await clients[leader].session(slow.id)).state == SessionState.MIGRATING

            await eventually(migrating, timeout=60, what="the slow session migrating")
            await clients[standby].cancel(slow.id)
            assert (await session_end(clients[leader], slow.id, timeout=30)).state == SessionState.CANCELLED

            for move in moves:
                assert (await session_end(clients[leader], move.id, timeout=90)).state == SessionState.COMPLETED

            async def drain_done():
                (drain,) = await clients[standby].drains("src")
                return drain if drain.state == DrainState.DONE else None

            drain = await eventually(drain_done, timeout=90, what="the drain of src done")
            assert all(item.state == "moved" for item in drain.items)

            # An undrain through the standby lifts the mark everywhere.
            await clients[standby].undrain("src")
            for name in NAMES:
                async def lifted(name=name):
                    return not next(h for h in (await clients[name].hosts()).hosts if h.host == "src").draining

                await eventually(lifted, timeout=5, what=f"src not draining through {name}")

            sessions = await clients[standby].sessions()
            assert len(sessions) == 7
            assert max_overlap(sessions, key=lambda s: "cluster")["cluster"] == 1
        finally:
            for client in clients.values():
                await client.close()


async def test_a_paused_leader_steps_down_and_never_leads_beside_the_new_one(daemons, nats_server, tmp_path):
    start_coordinators(daemons, nats_server.url)
    daemons.start("a", "ferry-agent", simulated_agent_toml("a", nats_server.url, tmp_path))
    async with await client_of(nats_server.url) as client:
        await wait_hosts_up(client, ["a"])
        leader = await settled_leader(client)
        standby = next(n for n in NAMES if n != leader)
        daemons.procs[leader].send_signal(signal.SIGSTOP)
        try:
            # Through the standby: a request to any coordinator would go to the paused one
            # half the time (NATS picks one of the queue group) and wait out its timeout.
            async with await client_of(nats_server.url, via=standby) as through_standby:
                async def standby_leads():
                    status = await through_standby.status()
                    return status.leader is not None and status.leader.holder == standby

                await eventually(standby_leads, timeout=15, what=f"{standby} leading")
        finally:
            daemons.procs[leader].send_signal(signal.SIGCONT)
        async with await client_of(nats_server.url, via=leader) as through_old:
            async def stood_down():
                status = await through_old.status()
                return status.role == Role.STANDBY and status.leader is not None and status.leader.holder == standby

            await eventually(stood_down, timeout=10, what=f"{leader} standing by")
    assert "leadership_lost" in daemons.log(leader)
