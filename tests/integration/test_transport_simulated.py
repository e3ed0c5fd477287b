"""TLS for the migration stream and the peers a source dials, through real
processes and a real nats-server on the simulated backend: agents with the
default config refuse `--no-tls` (`tls_required`) and any peer URI that is not
`qemu+tls://` (`peer_refused`), even from a sender allowed to publish on their
migrate subject, and a completed session records the encryption the source
used. The same with real libvirt is in tests/lab/test_sessions.py."""

import pytest

from ferry.coordinator.agents import AgentClient
from ferry.proto.agent import MigrateRequest as AgentMigrateRequest
from ferry.proto.api import MigrateRequest
from ferry.proto.errors import FerryError
from ferry.proto.session import MigrateOptions, SessionState
from ferry.runtime.identity import Role
from tests.support.cluster import connect_client, vms_by_host, wait_hosts_up
from tests.support.processes import coordinator_toml, simulated_agent_toml, simulated_peer_uri
from tests.support.secured import connect_as
from tests.support.waiting import session_end

pytestmark = pytest.mark.integration


def start_two_hosts(daemons, nats_server, tmp_path) -> None:
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, vms=[("g1", 1, 512)]))
    daemons.start("dst", "ferry-agent", simulated_agent_toml("dst", nats_server.url, tmp_path))


async def test_no_tls_is_refused_with_tls_required_and_the_vm_stays(daemons, nats_server, tmp_path):
    start_two_hosts(daemons, nats_server, tmp_path)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst"])
        # What `ferry migrate g1 --no-tls` sends.
        session = await client.migrate(MigrateRequest(vm="g1", options=MigrateOptions(tls=False)))
        final = await session_end(client, session.id)
        assert final.state == SessionState.FAILED and final.code == "tls_required", final.reason
        assert final.reason.startswith("src did not start the migration: g1 is not migrated without TLS")
        assert "require_tls = false" in final.reason and "[migration]" in final.reason
        assert final.encryption == ""
        where = await vms_by_host(client)
        assert "g1" in where["src"] and "g1" not in where["dst"]
        # Nothing was started: the same VM moves at once with TLS.
        again = await session_end(client, (await client.migrate(MigrateRequest(vm="g1"))).id)
        assert again.state == SessionState.COMPLETED, again.reason


async def test_a_completed_session_records_tls(daemons, nats_server, tmp_path):
    start_two_hosts(daemons, nats_server, tmp_path)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst"])
        hosts = {h.host: h for h in (await client.hosts()).hosts}
        assert hosts["dst"].peer_uri == simulated_peer_uri("dst"), "the peer URI announced in dst's heartbeat"
        final = await session_end(client, (await client.migrate(MigrateRequest(vm="g1"))).id)
        assert final.state == SessionState.COMPLETED, final.reason
        assert final.options.tls and final.encryption == "tls"


@pytest.mark.parametrize(
    "peer_uri, refused_because",
    [
        ("qemu+tcp://dst/system", "its scheme qemu+tcp is not one of the allowed peer schemes (qemu+tls)"),
        ("qemu+ssh://root@dst/system", "its scheme qemu+ssh is not one of the allowed peer schemes"),
        ("qemu+tls://dst/system?no_verify=1", "turns off the check of the peer's certificate"),
    ],
)
async def test_a_migrate_request_naming_another_kind_of_peer_is_refused_by_the_agent(
    daemons, nats_server, tmp_path, peer_uri, refused_because
):
    start_two_hosts(daemons, nats_server, tmp_path)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst"])
        # Straight to the agent's migrate subject, as only a coordinator may publish there:
        # the agent judges the peer itself.
        nc = await connect_as(nats_server.url, "intruder", Role.COORDINATOR)
        try:
            request = AgentMigrateRequest(session_id="forged01", vm="g1", dest="dst", peer_uri=peer_uri)
            with pytest.raises(FerryError) as refused:
                await AgentClient(nc, timeout=5.0).migrate("src", request)
        finally:
            await nc.close()
        assert refused.value.code == "peer_refused"
        assert refused.value.message.startswith(f"g1 is not sent to {peer_uri}: ")
        assert refused_because in refused.value.message
        assert "g1" in (await vms_by_host(client))["src"]
