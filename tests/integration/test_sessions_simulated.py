"""Sessions through real processes and a real nats-server, on the simulated
hypervisor backend: the coordinator's decisions (declines, retries, refusals,
cancel) without the cost of real guests. Real migrations are proven in tests/lab."""

import asyncio

import nats
import pytest

from ferry.lab.nats_security import LAB_ADMIN
from ferry.proto import subjects
from ferry.proto.api import MigrateRequest
from ferry.proto.errors import FerryError
from ferry.proto.session import MigrateOptions, SessionState
from tests.support.cluster import connect_client, vms_by_host, wait_hosts_up
from tests.support.processes import coordinator_toml, simulated_agent_toml
from tests.support.secured import connect_as
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.integration


async def test_a_declining_destination_makes_the_coordinator_try_the_next(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, cpu_model="Model-A", vms=[("g1", 1, 512, "Model-A")]))
    # `roomy` scores best (most memory) but has another CPU model: only the agent can tell.
    daemons.start("roomy", "ferry-agent", simulated_agent_toml("roomy", nats_server.url, tmp_path, cpu_model="Model-B", memory_mib=65536))
    daemons.start("fits", "ferry-agent", simulated_agent_toml("fits", nats_server.url, tmp_path, cpu_model="Model-A"))
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "roomy", "fits"])
        session = await client.migrate(MigrateRequest(vm="g1"))
        final = await session_end(client, session.id)
        assert final.state == SessionState.COMPLETED, final.reason
        assert final.candidates_tried == ["roomy", "fits"]
        assert final.dest == "fits"
        decline = next(t for t in final.history if t.code == "cpu_incompatible")
        assert decline.reason.startswith("roomy declined: roomy cannot run g1's CPU")
        assert [t.state for t in final.history] == ["queued", "preparing", "preparing", "migrating", "completed"]

        async def moved():
            where = await vms_by_host(client)
            return "g1" in where["fits"] and "g1" not in where["src"] and "g1" not in where["roomy"]

        await eventually(moved, timeout=10, what="g1 reported on fits only")


async def test_a_named_destination_that_declines_fails_the_session(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, cpu_model="Model-A", vms=[("g1", 1, 512, "Model-A")]))
    daemons.start("other", "ferry-agent", simulated_agent_toml("other", nats_server.url, tmp_path, cpu_model="Model-B"))
    daemons.start("fits", "ferry-agent", simulated_agent_toml("fits", nats_server.url, tmp_path, cpu_model="Model-A"))
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "other", "fits"])
        session = await client.migrate(MigrateRequest(vm="g1", dest="other"))
        final = await session_end(client, session.id)
        assert final.state == SessionState.FAILED
        assert final.code == "cpu_incompatible"
        assert final.candidates_tried == ["other"]
        assert "g1" in (await vms_by_host(client))["src"]


async def test_two_requests_for_one_vm_at_once_start_one_session(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, vms=[("g1", 1, 512)], migration_mib_per_s=64))
    daemons.start("dst", "ferry-agent", simulated_agent_toml("dst", nats_server.url, tmp_path))
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst"])
        outcomes = await asyncio.gather(
            *(client.migrate(MigrateRequest(vm="g1")) for _ in range(5)), return_exceptions=True
        )
        started = [o for o in outcomes if not isinstance(o, Exception)]
        refused = [o for o in outcomes if isinstance(o, FerryError)]
        assert len(started) == 1 and len(refused) == 4, outcomes
        assert all(e.code == "conflict" and started[0].id in e.message for e in refused)
        final = await session_end(client, started[0].id, timeout=120)
        assert final.state == SessionState.COMPLETED, final.reason


async def test_cancel_while_migrating_keeps_the_vm_on_its_source(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, vms=[("g1", 1, 4096)]))
    daemons.start("dst", "ferry-agent", simulated_agent_toml("dst", nats_server.url, tmp_path))
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst"])
        session = await client.migrate(MigrateRequest(vm="g1", options=MigrateOptions(bandwidth_mib=16)))

        async def migrating():
            s = await client.session(session.id)
            return s.state == SessionState.MIGRATING and s.progress is not None

        await eventually(migrating, timeout=10, what="migrating with progress")
        await client.cancel(session.id)
        final = await session_end(client, session.id)
        assert final.state == SessionState.CANCELLED and final.code == "cancelled"
        with pytest.raises(FerryError) as again:
            await client.cancel(session.id)
        assert again.value.code == "conflict" and "already ended: cancelled" in again.value.message
        where = await vms_by_host(client)
        assert "g1" in where["src"] and "g1" not in where["dst"]
        # The claim is released: the VM can be moved again.
        retry = await client.migrate(MigrateRequest(vm="g1"))
        assert (await session_end(client, retry.id, timeout=60)).state == SessionState.COMPLETED


@pytest.mark.parametrize(
    "verb, payload",
    [
        ("migrate", b"{"),
        ("migrate", b'{"vm": "a\\nb"}'),
        ("migrate", b'{"vm": "g1", "options": {"bandwidth_mib": -1}}'),
        ("migrate", b'{"vm": "g1", "options": {"storage": "teleport"}}'),
        ("session", b'{"id": "NOT AN ID"}'),
        ("cancel", b"[]"),
        ("bandwidth", b'{"id": "abcdef12", "bandwidth_mib": "fast"}'),
    ],
)
async def test_bad_session_requests_get_bad_request(daemons, nats_server, verb, payload):
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    nc = await connect_as(nats_server.url)
    try:
        async def ask():
            try:
                return await nc.request(subjects.api(verb, caller=LAB_ADMIN), payload, timeout=1.0)
            except nats.errors.NoRespondersError:
                return None

        reply = await eventually(ask, timeout=10, what="coordinator answering")
        assert reply.headers["Nats-Service-Error-Code"] == "bad_request"
        assert b'"code":"bad_request"' in reply.data
    finally:
        await nc.close()


async def test_unknown_session_is_not_found(daemons, nats_server):
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    async with await connect_client(nats_server) as client:
        async def ask():
            try:
                await client.session("abcdef123456")
            except FerryError as exc:
                return (exc,) if exc.code != "unavailable" else None

        (error,) = await eventually(ask, timeout=10, what="an answer")
        assert error.code == "not_found" and error.message == "there is no session abcdef123456"
