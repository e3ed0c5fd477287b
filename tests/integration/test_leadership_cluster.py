"""Two coordinators on a three-node NATS cluster: buckets with three copies
(scaled up from one), and a nats-server killed mid-migration."""

import pytest
from nats.js.api import KeyValueConfig

from ferry.coordinator.session_store import BUCKET as SESSIONS_BUCKET
from ferry.proto.api import MigrateRequest
from ferry.proto.session import SessionState
from ferry.runtime.identity import Role
from tests.integration.test_leadership import client_of, settled_leader, start_coordinators
from tests.support.cluster import wait_hosts_up
from tests.support.processes import simulated_agent_toml
from tests.support.secured import connect_as
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.integration


async def test_buckets_get_three_copies_and_a_dead_nats_server_loses_no_session(daemons, nats_cluster, tmp_path):
    urls = nats_cluster.urls
    # A bucket left by a single-server install: one copy.
    nc = await connect_as(urls, "c-test", Role.COORDINATOR)
    await nc.jetstream().create_key_value(KeyValueConfig(bucket=SESSIONS_BUCKET, replicas=1))
    await nc.close()

    start_coordinators(daemons, urls)
    daemons.start("a", "ferry-agent", simulated_agent_toml("a", urls, tmp_path, vms=[("big", 1, 2048)], migration_mib_per_s=256))
    daemons.start("b", "ferry-agent", simulated_agent_toml("b", urls, tmp_path, migration_mib_per_s=256))
    async with await client_of(urls) as client:
        await wait_hosts_up(client, ["a", "b"])
        leader = await settled_leader(client)
        async with await client_of(urls, via=leader) as through_leader:
            status = await through_leader.status()
            assert {b.name: b.replicas for b in status.buckets} == {
                "ferry_sessions": 3, "ferry_vm_claims": 3, "ferry_drains": 3, "ferry_settings": 3, "ferry_leader": 3,
                "ferry_cordons": 3, "ferry_ha": 3, "ferry_fences": 3, "ferry_domains": 3, "ferry_restarts": 3,
            }, "every bucket keeps a copy on each server; the old one was scaled up"
            assert status.nats_cluster and len(status.nats_servers) == 3

            session = await through_leader.migrate(MigrateRequest(vm="big", dest="b"))

            async def migrating():
                return (await through_leader.session(session.id)).state == SessionState.MIGRATING

            await eventually(migrating, timeout=30, what="migrating")
            # The server the leader talks to goes: the leader and its KV fail over to the others.
            server = (await through_leader.status()).nats_server
            index = next(i for i, url in enumerate(urls) if url.endswith(server))
            nats_cluster.kill(index)
            try:
                ended = await session_end(client, session.id, timeout=60)
                assert ended.state == SessionState.COMPLETED, ended.reason
            finally:
                nats_cluster.start_server(index)
        sessions = await client.sessions()
        assert [s.id for s in sessions] == [session.id], "no session lost or doubled"
