"""Health-driven decisions through real processes, a real nats-server and real
probe scripts, on the simulated backend: WARNING stops placements, CRITICAL
held past the debounce evacuates, recovery does not undrain, a lost host is
reported and never evacuated. The lab proves the same evacuation with real guests."""

import pytest

from ferry.agent.probes import install_probe
from ferry.proto.api import MigrateRequest
from ferry.proto.drain import DrainRequest, DrainState, ItemState
from ferry.proto.errors import FerryError
from ferry.proto.session import SessionOrigin, SessionState
from tests.support.cluster import (
    CoordinatorEvents,
    connect_client,
    vms_by_host,
    wait_hosts_up,
)
from tests.support.processes import coordinator_toml, simulated_agent_toml
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.integration

DEBOUNCE = 2.0


def coordinator(nats_url: str) -> str:
    return coordinator_toml(nats_url, heartbeat_timeout=2.0) + f"[evacuation]\ndebounce_seconds = {DEBOUNCE}\n"


async def host(client, name):
    return next(h for h in (await client.hosts()).hosts if h.host == name)


async def test_warning_stops_placements_and_critical_evacuates_after_the_debounce(daemons, nats_server, tmp_path):
    probes = tmp_path / "probes"
    probes.mkdir()
    daemons.start("coordinator", "ferry-coordinator", coordinator(nats_server.url))
    daemons.start("sick", "ferry-agent", simulated_agent_toml(
        "sick", nats_server.url, tmp_path, vms=[("g1", 1, 512), ("g2", 1, 512)], probe_dir=probes, probe_timeout=5.0
    ))
    # `roomy` would be placement's first choice for anything.
    daemons.start("roomy", "ferry-agent", simulated_agent_toml("roomy", nats_server.url, tmp_path, memory_mib=65536, vms=[("w1", 1, 512)]))
    daemons.start("small", "ferry-agent", simulated_agent_toml("small", nats_server.url, tmp_path))
    events = await CoordinatorEvents().start(nats_server.url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["sick", "roomy", "small"])

        install_probe(probes, "raid", 'echo "WARNING - md0 resyncing"; exit 1')
        await eventually(events_of(events, "placements_stopped"), timeout=10, what="placements stopped")
        (stopped,) = events.tagged("placements_stopped")
        assert (stopped.host, stopped.health, stopped.reason) == ("sick", "warning", "probe:raid: WARNING - md0 resyncing")
        # A VM looking for a host does not get the warning one, though it has room.
        moved = await session_end(client, (await client.migrate(MigrateRequest(vm="w1"))).id)
        assert moved.state == SessionState.COMPLETED and moved.dest == "small"
        assert not (await host(client, "sick")).draining, "WARNING does not drain"

        install_probe(probes, "raid", 'echo "CRITICAL - md0 degraded"; exit 2')
        await eventually(events_of(events, "drain_started"), timeout=DEBOUNCE + 10, what="evacuation")
        (pending,) = events.tagged("evacuation_pending")
        (started,) = events.tagged("drain_started")
        assert started.automatic and started.host == "sick" and started.vms == 2
        assert started.reason == f"health critical for {DEBOUNCE:g} s: probe:raid: CRITICAL - md0 degraded"
        assert started.at - pending.at >= DEBOUNCE - 0.3

        async def done():
            (d,) = await client.drains("sick")
            return d if d.state == DrainState.DONE else None

        drain = await eventually(done, timeout=30, what="evacuation done")
        assert all(i.state == ItemState.MOVED for i in drain.items)
        sessions = [s for s in await client.sessions() if s.drain_host == "sick"]
        assert {s.vm for s in sessions} == {"g1", "g2"} and all(s.origin == SessionOrigin.EVACUATION for s in sessions)

        async def emptied():
            return (await vms_by_host(client))["sick"] == set()

        await eventually(emptied, timeout=5, what="sick reported empty")

        # Healthy again: placements resume, but the host stays draining until an operator says.
        (probes / "raid").unlink()
        await eventually(events_of(events, "placements_resumed"), timeout=10, what="placements resumed")
        assert (await host(client, "sick")).draining
        assert "host_undrained" not in events.tags()
    await events.close()


async def test_a_flap_shorter_than_the_debounce_evacuates_nothing(daemons, nats_server, tmp_path):
    probes = tmp_path / "probes"
    probes.mkdir()
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url) + "[evacuation]\ndebounce_seconds = 5\n")
    daemons.start("flaky", "ferry-agent", simulated_agent_toml(
        "flaky", nats_server.url, tmp_path, vms=[("g1", 1, 512)], probe_dir=probes, probe_timeout=5.0
    ))
    daemons.start("other", "ferry-agent", simulated_agent_toml("other", nats_server.url, tmp_path))
    events = await CoordinatorEvents().start(nats_server.url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["flaky", "other"])
        install_probe(probes, "nic", 'echo "CRITICAL - link down"; exit 2')
        await eventually(events_of(events, "evacuation_pending"), timeout=10, what="evacuation pending")
        (probes / "nic").unlink()
        await eventually(events_of(events, "evacuation_called_off"), timeout=10, what="called off")
        (off,) = events.tagged("evacuation_called_off")
        assert off.reason == "flaky is ok again before the debounce ended"
        assert "drain_started" not in events.tags() and not (await host(client, "flaky")).draining
    await events.close()


async def test_a_lost_host_is_reported_with_its_vms_and_not_evacuated(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", coordinator(nats_server.url))
    daemons.start("doomed", "ferry-agent", simulated_agent_toml("doomed", nats_server.url, tmp_path, vms=[("g1", 1, 512), ("g2", 1, 256)]))
    daemons.start("other", "ferry-agent", simulated_agent_toml("other", nats_server.url, tmp_path))
    events = await CoordinatorEvents().start(nats_server.url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["doomed", "other"])
        daemons.kill("doomed")
        await eventually(events_of(events, "host_lost"), timeout=10, what="host lost")
        (lost,) = events.tagged("host_lost")
        assert lost.host == "doomed" and lost.vms == ["g1", "g2"]
        assert '"level": "error"' in next(
            line for line in daemons.log("coordinator").splitlines() if '"event": "host_lost"' in line
        )
        refused = await client_error(client.drain, "doomed")
        assert refused.code == "host_lost" and "cannot be live-migrated" in refused.message
        assert "drain_started" not in events.tags()
    await events.close()


def events_of(events: CoordinatorEvents, tag: str):
    async def seen():
        return bool(events.tagged(tag))

    return seen


async def client_error(call, host):
    try:
        await call(DrainRequest(host=host))
    except FerryError as exc:
        return exc
    raise AssertionError(f"draining {host} was accepted")
