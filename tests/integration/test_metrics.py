"""/metrics of real coordinators and simulated agents over HTTP, during and after a
migration; the exposition passes `promtool check metrics`."""

import pytest

from ferry.lab.nats import free_ports
from ferry.proto.api import MigrateRequest
from ferry.proto.session import MigrateOptions, SessionState
from tests.support.cluster import connect_client, wait_hosts_up
from tests.support.processes import coordinator_toml, simulated_agent_toml
from tests.support.prometheus import check_metrics, samples, scrape, value
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.integration


async def test_coordinators_and_agents_serve_metrics_during_and_after_a_migration(daemons, nats_server, tmp_path):
    c1, c2, src, dst = (f"127.0.0.1:{port}" for port in free_ports(4))
    url = {name: f"http://{address}/metrics" for name, address in (("c1", c1), ("c2", c2), ("src", src), ("dst", dst))}
    daemons.start("c1", "ferry-coordinator", coordinator_toml(nats_server.url, name="c1", metrics_address=c1))
    daemons.start("c2", "ferry-coordinator", coordinator_toml(nats_server.url, name="c2", metrics_address=c2))
    daemons.start("src", "ferry-agent", simulated_agent_toml(
        "src", nats_server.url, tmp_path, vms=[("g1", 1, 2048)], metrics_address=src,
    ))
    daemons.start("dst", "ferry-agent", simulated_agent_toml("dst", nats_server.url, tmp_path, metrics_address=dst))
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst"])

        async def one_leader():
            leading = {}
            for name in ("c1", "c2"):
                found = samples(await scrape(url[name]))
                leading[name] = value(found, "ferry_coordinator_leader", coordinator=name)
            return [n for n, v in leading.items() if v == 1.0] if sorted(leading.values()) == [0.0, 1.0] else None

        (leader,) = await eventually(one_leader, timeout=20, what="one coordinator reporting it leads")
        standby = "c2" if leader == "c1" else "c1"
        # 2 GiB at 16 MiB/s: long enough to be seen in flight (sped up once seen).
        session = await client.migrate(MigrateRequest(vm="g1", dest="dst", options=MigrateOptions(bandwidth_mib=16)))
        labels = {"vm": "g1", "session": session.id, "source": "src", "dest": "dst"}

        async def transferring(name):
            found = samples(await scrape(url[name]))
            processed = value(found, "ferry_migration_data_processed_bytes", **labels)
            return (found, processed) if processed else None

        agent_during, _ = await eventually(lambda: transferring("src"), timeout=20, what="the source's transfer gauges")
        leader_during, _ = await eventually(lambda: transferring(leader), timeout=20, what="the leader's transfer gauges")
        assert value(agent_during, "ferry_migration_data_remaining_bytes", **labels) > 0
        assert value(agent_during, "ferry_migration_jobs_active", role="source") == 1.0
        assert value(leader_during, "ferry_migrations", phase="migrating") == 1.0
        assert value(leader_during, "ferry_migration_queue_depth") == 0.0
        assert value(leader_during, "ferry_migration_memory_transfer_rate_bytes", **labels) > 0

        # Seen in flight: let it finish quickly.
        await client.bandwidth(session.id, 4096)
        final = await session_end(client, session.id, timeout=60)
        assert final.state == SessionState.COMPLETED, final.reason

        async def counted():
            found = samples(await scrape(url[leader]))
            # The counters move at once; the gauges with the next snapshot (a second at most).
            ended = value(found, "ferry_migration_succeeded_total") == 1.0
            return found if ended and value(found, "ferry_migrations", phase="migrating") == 0.0 else None

        leader_after = await eventually(counted, timeout=10, what="the leader counting the completed session")
        assert value(leader_after, "ferry_migration_duration_seconds_count") == 1.0
        assert value(leader_after, "ferry_migration_downtime_seconds_count") == 1.0
        assert value(leader_after, "ferry_migration_data_processed_bytes", **labels) is None
        assert value(leader_after, "ferry_hosts", state="up", health="ok") == 2.0
        assert value(leader_after, "ferry_nats_connected") == 1.0
        assert set(leader_after["ferry_host_heartbeat_age_seconds"]) == {
            frozenset({("host", "src")}), frozenset({("host", "dst")})
        }

        standby_after = samples(await scrape(url[standby]))
        # Only the leader knows sessions and counts their ends.
        assert value(standby_after, "ferry_coordinator_leader", coordinator=standby) == 0.0
        assert value(standby_after, "ferry_migration_succeeded_total") == 0.0
        assert "ferry_migrations" not in standby_after
        assert value(standby_after, "ferry_hosts", state="up", health="ok") == 2.0

        async def arrived():
            found = samples(await scrape(url["dst"]))
            return found if value(found, "ferry_vms_running") == 1.0 else None

        dst_after = await eventually(arrived, timeout=10, what="dst counting g1 as running")
        assert value(dst_after, "ferry_libvirt_connected") == 1.0
        assert value(dst_after, "ferry_heartbeats_sent_total") > 0
        assert value(dst_after, "ferry_host_health", state="ok") == 1.0
        assert any(labels_ for labels_ in dst_after["ferry_build_info"] if ("daemon", "agent") in labels_)

        for name in url:
            check_metrics(await scrape(url[name]))


async def test_a_port_in_use_leaves_the_daemon_running_without_metrics(daemons, nats_server, tmp_path):
    (port,) = free_ports(1)
    taken = f"127.0.0.1:{port}"
    daemons.start("c1", "ferry-coordinator", coordinator_toml(nats_server.url, name="c1", metrics_address=taken))
    await eventually(lambda: _serves(f"http://{taken}/metrics"), timeout=20, what="c1 serving /metrics")
    # The second coordinator finds the port taken: it says so and coordinates anyway.
    daemons.start("c2", "ferry-coordinator", coordinator_toml(nats_server.url, name="c2", metrics_address=taken))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path))
    await eventually(lambda: _logged(daemons, "c2", "metrics_not_served"), timeout=20, what="c2 logging the taken port")
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src"])
    assert daemons.procs["c2"].poll() is None


async def _serves(url: str) -> bool:
    return "ferry_coordinator_leader" in await scrape(url)


async def _logged(daemons, name: str, text: str) -> bool:
    return text in daemons.log(name)
