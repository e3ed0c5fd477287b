"""Admission limits, drains and bandwidth sharing through real processes and a
real nats-server, on the simulated hypervisor backend. Real migrations are
proven in tests/lab; these check the coordinator's decisions."""

import asyncio
import re

import pytest

from ferry.coordinator.session_history import max_overlap
from ferry.proto.api import MigrateRequest
from ferry.proto.drain import DrainRequest, DrainState, ItemState
from ferry.proto.limits import LimitsRequest
from ferry.proto.session import MigrateOptions, SessionOrigin, SessionState
from tests.support.cluster import (
    CoordinatorEvents,
    connect_client,
    vms_by_host,
    wait_hosts_up,
)
from tests.support.ferry_cli import ferry
from tests.support.processes import coordinator_toml, simulated_agent_toml
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.integration


def limits_toml(nats_url, **limits):
    body = "".join(f"{key} = {value}\n" for key, value in limits.items())
    return coordinator_toml(nats_url) + "[limits]\n" + body + "[drain]\nretry_delay = 0.5\n"


async def test_drain_moves_every_vm_within_the_outbound_limit_and_the_host_stays_draining(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", limits_toml(nats_server.url, outbound_per_host=2))
    vms = [(f"g{i}", 1, 512) for i in range(5)]
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, vms=vms, migration_mib_per_s=512))
    for name in ("a", "b"):
        daemons.start(name, "ferry-agent", simulated_agent_toml(name, nats_server.url, tmp_path, migration_mib_per_s=512))
    events = await CoordinatorEvents().start(nats_server.url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "a", "b"])
        plan = ferry(nats_server.url, "drain", "src", "--dry-run")
        assert plan.code == 0, plan.stderr
        assert "plan for draining src (dry run" in plan.stdout and "5 VMs: 5 placed, 0 cannot be placed now" in plan.stdout
        assert not (await client.hosts()).hosts[-1].draining, "a dry run marks nothing"

        run = ferry(nats_server.url, "drain", "src", "--wait")
        assert run.code == 0, run.stdout + run.stderr
        assert "drain of src done: 5 VMs: 5 moved" in run.stdout
        # The whole drain's progress as it went: VMs done, data moved, a percent that never falls.
        lines = re.findall(r"(\d)/5 VMs done, ([\d.]+) GiB moved, (\d+)%", run.stdout)
        assert lines and lines[-1] == ("5", lines[-1][1], "100"), run.stdout
        percents = [int(p) for _done, _moved, p in lines]
        assert percents == sorted(percents) and float(lines[-1][1]) >= 2.4  # 5 x 512 MiB at least

        (drain,) = await client.drains("src")
        assert drain.state == DrainState.DONE and all(i.state == ItemState.MOVED for i in drain.items)
        sessions = [s for s in await client.sessions() if s.drain_host == "src"]
        assert len(sessions) == 5 and all(s.state == SessionState.COMPLETED for s in sessions)
        assert all(s.origin == SessionOrigin.DRAIN for s in sessions)
        assert max_overlap(sessions, key=lambda s: s.source)["src"] == 2
        async def emptied():
            # The reports lag a move by up to a heartbeat.
            placed = await vms_by_host(client)
            return placed["src"] == set() and placed["a"] | placed["b"] == {f"g{i}" for i in range(5)}

        await eventually(emptied, timeout=5, what="src reported empty, its VMs on a and b")
        src = next(h for h in (await client.hosts()).hosts if h.host == "src")
        assert src.draining and src.drain_reason == "operator"

        # Nothing new goes to a draining host.
        refused = ferry(nats_server.url, "migrate", "g0", "--to", "src")
        assert refused.code == 1 and "ferry: conflict: the destination src is draining (operator)" in refused.stderr

        undrained = ferry(nats_server.url, "undrain", "src")
        assert undrained.code == 0 and "src is no longer draining" in undrained.stdout
        assert not next(h for h in (await client.hosts()).hosts if h.host == "src").draining
    async def finished():
        return "drain_finished" in events.tags()

    await eventually(finished, timeout=5, what="drain_finished event")
    tags = events.tags()
    assert tags.count("vm_placed") == 5 and "drain_started" in tags and "host_undrained" in tags
    await events.close()


async def test_a_failed_move_is_retried_on_another_destination_and_given_up_when_attempts_run_out(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", limits_toml(nats_server.url))
    # src cannot reach `bad`, which has the most room (placement prefers it); `ok` is reachable.
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, vms=[("g1", 1, 512)], unreachable=["bad", "ok"]))
    daemons.start("bad", "ferry-agent", simulated_agent_toml("bad", nats_server.url, tmp_path, memory_mib=65536))
    daemons.start("ok", "ferry-agent", simulated_agent_toml("ok", nats_server.url, tmp_path))
    events = await CoordinatorEvents().start(nats_server.url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "bad", "ok"])
        reply = await client.drain(DrainRequest(host="src"))
        assert reply.drain.items[0].dest == "bad"

        async def done():
            (d,) = await client.drains("src")
            return d if d.state == DrainState.DONE else None

        drain = await eventually(done, timeout=40, what="drain done")
        (item,) = drain.items
        assert item.state == ItemState.GAVE_UP and item.attempts == 3
        assert item.failed_on == ["bad", "ok"]
        assert "gave up after 3 attempts" in item.reason and "no host can take g1" in item.reason
        assert "g1" in (await vms_by_host(client))["src"], "the VM stays where it runs"
    retries = events.tagged("drain_retry")
    assert [(r.attempt, r.failed_on) for r in retries] == [(2, "bad"), (3, "ok")]
    assert "drain_gave_up" in events.tags()
    await events.close()


async def test_queued_sessions_start_by_priority_then_age_under_the_cluster_limit(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", limits_toml(nats_server.url, cluster=1))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, vms=[("g1", 1, 1024), ("g2", 1, 256), ("g3", 1, 256), ("g4", 1, 256)], migration_mib_per_s=512))
    daemons.start("dst", "ferry-agent", simulated_agent_toml("dst", nats_server.url, tmp_path, migration_mib_per_s=512))
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst"])
        first = await client.migrate(MigrateRequest(vm="g1"))
        low = await client.migrate(MigrateRequest(vm="g2", options=MigrateOptions(priority=-5)))
        old = await client.migrate(MigrateRequest(vm="g3"))
        high = await client.migrate(MigrateRequest(vm="g4", options=MigrateOptions(priority=50)))

        async def waiting():
            s = await client.session(low.id)
            return s if s.waiting else None

        held = await waiting() or await eventually(waiting, timeout=5, what="a waiting reason")
        assert held.waiting == "1 migrations are in flight; the cluster limit is 1"
        finals = [await session_end(client, s.id, timeout=60) for s in (first, low, old, high)]
        assert all(s.state == SessionState.COMPLETED for s in finals)
        started = {s.vm: next(t.at for t in s.history if t.state == SessionState.PREPARING) for s in finals}
        assert sorted(started, key=started.get) == ["g1", "g4", "g3", "g2"]
        assert max_overlap(finals, key=lambda s: "cluster")["cluster"] == 1


async def test_limits_change_at_runtime_and_survive_a_coordinator_restart(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", limits_toml(nats_server.url))
    async with await connect_client(nats_server) as client:
        reply = await eventually(client.limits, timeout=10, what="limits")
        assert (reply.limits.cluster, reply.source) == (5, "config")
        changed = ferry(nats_server.url, "limits", "--cluster", "3", "--host-bandwidth", "200")
        assert changed.code == 0, changed.stderr
        assert "3 in the cluster" in changed.stdout and "200 MiB/s" in changed.stdout and "(from the runtime)" in changed.stdout
        bad = ferry(nats_server.url, "limits", "--cluster", "0")
        assert bad.code == 1 and bad.stderr.startswith("ferry: bad_request:")

        daemons.kill("coordinator")
        daemons.start("coordinator", "ferry-coordinator", limits_toml(nats_server.url))
        again = await eventually(client.limits, timeout=10, what="limits after restart")
        assert (again.limits.cluster, again.limits.host_bandwidth_mib, again.source) == (3, 200, "runtime")
        reset = await client.limits(LimitsRequest(reset=True))
        assert (reset.limits.cluster, reset.source) == (5, "config")


async def test_the_host_bandwidth_budget_is_shared_and_a_finished_migrations_share_goes_to_the_rest(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", limits_toml(nats_server.url, host_bandwidth_mib=64))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, vms=[("small", 1, 96), ("big", 1, 640)]))
    daemons.start("a", "ferry-agent", simulated_agent_toml("a", nats_server.url, tmp_path))
    daemons.start("b", "ferry-agent", simulated_agent_toml("b", nats_server.url, tmp_path))
    events = await CoordinatorEvents().start(nats_server.url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "a", "b"])
        big = await client.migrate(MigrateRequest(vm="big", dest="a"))
        await eventually(lambda: _state(client, big.id, SessionState.MIGRATING), timeout=10, what="big migrating")
        small = await client.migrate(MigrateRequest(vm="small", dest="b"))
        done = await session_end(client, small.id, timeout=30)
        assert done.state == SessionState.COMPLETED and done.bandwidth_applied_mib == 32

        async def full_budget():
            s = await client.session(big.id)
            return s.bandwidth_applied_mib == 64 or s.state.terminal

        await eventually(full_budget, timeout=10, what="big gets the whole budget")
        final = await session_end(client, big.id, timeout=60)
        assert final.state == SessionState.COMPLETED and final.bandwidth_applied_mib == 64
    shares = [(e.vm, e.bandwidth_mib) for e in events.tagged("bandwidth_shared")]
    assert shares == [("big", 32), ("big", 64)]
    await events.close()


async def _state(client, session_id, state):
    return (await client.session(session_id)).state == state


# Hosts sized for exactly three VMs of 512 MiB: the agent keeps 1024 MiB for
# itself (SimulatedHost.reserved_mib) and both placement and the destination's
# prepare want 128 MiB free beyond the VM, so 1024 + 3 * 512 + 128 = 2688 MiB
# takes the third VM with nothing to spare and never a fourth.
EXACTLY_THREE_VMS_MIB = 1024 + 3 * 512 + 128
# A source full enough that the other source cannot send it a VM before its own
# drain marks it (440 MiB free, 640 needed), yet healthy (14.7 % free, warning below 10 %).
FULL_SOURCE_MIB = 3000


@pytest.mark.parametrize("inbound_per_host", [1, 2])
async def test_two_drains_into_exactly_enough_room_both_finish(daemons, nats_server, tmp_path, inbound_per_host):
    # Each drain plans without the other's VMs, so together their plans ask d1 for more than it holds.
    # Admission sorts that out, as long as a session waiting for room does not
    # hold room itself (it used to, on its planned host: both drains stalled).
    daemons.start("coordinator", "ferry-coordinator", limits_toml(nats_server.url, inbound_per_host=inbound_per_host))
    sources = {"s1": [f"s1g{i}" for i in range(3)], "s2": [f"s2g{i}" for i in range(3)]}
    for source, names in sources.items():
        vms = [(name, 1, 512) for name in names]
        daemons.start(source, "ferry-agent", simulated_agent_toml(
            source, nats_server.url, tmp_path, memory_mib=FULL_SOURCE_MIB, vms=vms, migration_mib_per_s=512))
    for dest in ("d1", "d2"):
        daemons.start(dest, "ferry-agent", simulated_agent_toml(
            dest, nats_server.url, tmp_path, memory_mib=EXACTLY_THREE_VMS_MIB, migration_mib_per_s=512))
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, [*sources, "d1", "d2"])
        replies = await asyncio.gather(*(client.drain(DrainRequest(host=s)) for s in sources))
        # Each plan alone fits: both see all the room, neither the other's VMs.
        assert all(i.dest in ("d1", "d2") for r in replies for i in r.drain.items)

        async def both_done():
            drains = [await client.drains(s) for s in sources]
            return drains if all(d.state == DrainState.DONE for (d,) in drains) else None

        try:
            drains = await eventually(both_done, timeout=45, what="both drains done")
        except AssertionError:
            stuck = [f"{s.vm} {s.state} dest={s.dest} waiting={s.waiting!r}" for s in await client.sessions()
                     if not s.state.terminal]
            raise AssertionError(f"drains stalled; sessions not ended: {stuck}") from None
        for (drain,) in drains:
            assert [(i.vm, i.state) for i in drain.items] == [(i.vm, ItemState.MOVED) for i in drain.items], drain.items
        sessions = await client.sessions()
        assert all(s.state.terminal for s in sessions), "nothing left waiting"
        completed = sorted(s.vm for s in sessions if s.state == SessionState.COMPLETED)
        assert completed == sorted(name for names in sources.values() for name in names), [
            (s.vm, s.state, s.reason) for s in sessions]
        overlap = max_overlap(sessions, key=lambda s: s.dest or "")
        assert overlap["d1"] <= inbound_per_host and overlap["d2"] <= inbound_per_host

        async def placed():
            on = await vms_by_host(client)
            return on if on["s1"] == on["s2"] == set() and len(on["d1"]) == len(on["d2"]) == 3 else None

        on = await eventually(placed, timeout=5, what="the six VMs reported on d1 and d2, three each")
        assert on["d1"] | on["d2"] == {name for names in sources.values() for name in names}
