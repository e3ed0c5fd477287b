"""Agents (simulated backend) and a coordinator as real processes around a real nats-server."""

import asyncio
import json
import subprocess
import time

import pytest

from ferry.cli.client import FerryClient
from ferry.proto.api import HostState
from ferry.proto.codec import Decoder
from ferry.proto.errors import ErrorReply
from ferry.runtime.identity import Role
from tests.support.processes import coordinator_toml, script, simulated_agent_toml
from tests.support.secured import cli_args, connect_as, settings_for
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

INTERVAL = 0.5  # heartbeat; lost after 3 intervals = 1.5 s


def start_cluster(daemons, nats_server, tmp_path, hosts=("hv1", "hv2", "hv3")):
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    for i, host in enumerate(hosts):
        daemons.start(
            host,
            "ferry-agent",
            simulated_agent_toml(
                host, nats_server.url, tmp_path, interval=INTERVAL, cpus=8 + i,
                vms=[(f"{host}-vm{j}", 2, 512) for j in range(i + 1)],
            ),
        )


async def hosts_by_name(nats_server):
    async with await FerryClient.connect(settings_for(nats_server.url, request_timeout=1.0)) as c:
        return {h.host: h for h in (await c.hosts()).hosts}


def all_up(names):
    def check(hosts):
        return set(hosts) == set(names) and all(h.state == HostState.UP for h in hosts.values())
    return check


async def wait_hosts(nats_server, check, timeout, what):
    async def probe():
        hosts = await hosts_by_name(nats_server)
        return hosts if check(hosts) else None
    return await eventually(probe, timeout=timeout, what=what)


async def test_hosts_appear_with_their_figures(daemons, nats_server, tmp_path):
    start_cluster(daemons, nats_server, tmp_path)
    hosts = await wait_hosts(nats_server, all_up(["hv1", "hv2", "hv3"]), 15, "three hosts up")
    hv3 = hosts["hv3"]
    assert hv3.capacity.cpus == 10
    assert hv3.capacity.vcpus_used == 6 and hv3.capacity.memory_used_mib == 1536
    assert [vm.name for vm in hv3.vms] == ["hv3-vm0", "hv3-vm1", "hv3-vm2"]
    assert hv3.health == "ok" and hv3.backend == "simulated"
    assert hv3.versions.libvirt == "9.0.0" and hv3.versions.agent


async def test_killed_agent_becomes_lost_within_timeout(daemons, nats_server, tmp_path):
    start_cluster(daemons, nats_server, tmp_path)
    await wait_hosts(nats_server, all_up(["hv1", "hv2", "hv3"]), 15, "three hosts up")
    events = await connect_as(nats_server.url)
    seen = asyncio.Queue()

    async def collect(msg):
        seen.put_nowait(json.loads(msg.data))

    await events.subscribe("ferry.coordinator.event", cb=collect)
    await events.flush()
    daemons.kill("hv2")
    killed_at = time.monotonic()
    hosts = await wait_hosts(
        nats_server, lambda h: h["hv2"].state == HostState.LOST, 10, "hv2 lost"
    )
    # Timeout is 3 intervals (1.5 s); allow for the sweep period and request round trips.
    assert time.monotonic() - killed_at < 3 * INTERVAL + 1.5
    assert hosts["hv1"].state == HostState.UP and hosts["hv3"].state == HostState.UP
    event = await asyncio.wait_for(seen.get(), 5)
    assert event["type"] == "host_lost" and event["host"] == "hv2" and "no heartbeat" in event["reason"]
    await events.close()
    assert '"event": "host_lost"' in daemons.log("coordinator")


async def test_restarted_nats_server_is_survived_without_restarting_anything(daemons, nats_server, tmp_path):
    start_cluster(daemons, nats_server, tmp_path, hosts=("hv1", "hv2"))
    await wait_hosts(nats_server, all_up(["hv1", "hv2"]), 15, "hosts up")
    before = {name: p.pid for name, p in daemons.procs.items()}
    nats_server.stop()
    await asyncio.sleep(4)  # longer than the lost timeout: the coordinator must not blame the hosts
    nats_server.start()
    # Fresh heartbeats, not only remembered ones.
    await wait_hosts(
        nats_server,
        lambda h: all_up(["hv1", "hv2"])(h) and all(v.last_seen_age < INTERVAL for v in h.values()),
        20,
        "fresh heartbeats after restart",
    )
    assert {name: p.pid for name, p in daemons.procs.items()} == before
    assert all(p.poll() is None for p in daemons.procs.values())
    # Once per process and outage (a callback that re-entered itself once logged thousands).
    assert daemons.log("hv1").count('"nats_reconnected"') == 1
    assert daemons.log("coordinator").count('"nats_reconnected"') == 1
    assert "host_lost" not in daemons.log("coordinator")


GARBAGE = [b"\xff\xfe garbage", b"[1,2", b"null", b"42"]


@pytest.mark.parametrize(
    "subject, payload",
    [("ferry.api.lab-admin.hosts", p) for p in [*GARBAGE, b'{"include_lost": "yes"}']]
    + [("ferry.agent.hv1.status", p) for p in GARBAGE],
)
async def test_garbage_on_api_and_agent_subjects_gets_an_error_reply(daemons, nats_server, tmp_path, subject, payload):
    start_cluster(daemons, nats_server, tmp_path, hosts=("hv1",))
    await wait_hosts(nats_server, all_up(["hv1"]), 15, "hv1 up")
    # Asked as the identities that may: an operator (the API) and a coordinator (an agent).
    asker = await connect_as(nats_server.url, *(("c-test", Role.COORDINATOR) if subject.startswith("ferry.agent") else ()))
    nc = await connect_as(nats_server.url, "hv1", Role.HOST)
    try:
        msg = await asker.request(subject, payload, timeout=3)
        assert msg.headers["Nats-Service-Error-Code"] == "bad_request"
        reply = Decoder(ErrorReply, "error").decode(msg.data)
        assert reply.code == "bad_request" and reply.message
        # A publish of garbage onto a heartbeat subject must not hurt the coordinator.
        await nc.publish("ferry.host.hv1.status", payload)
        await nc.flush()
    finally:
        await nc.close()
        await asker.close()
    hosts = await hosts_by_name(nats_server)
    assert hosts["hv1"].state == HostState.UP
    assert all(p.poll() is None for p in daemons.procs.values())


async def test_agent_answers_status_requests_and_is_a_micro_service(daemons, nats_server, tmp_path):
    start_cluster(daemons, nats_server, tmp_path, hosts=("hv1",))
    await wait_hosts(nats_server, all_up(["hv1"]), 15, "hv1 up")
    nc = await connect_as(nats_server.url, "c-test", Role.COORDINATOR)
    try:
        status = json.loads((await nc.request("ferry.agent.hv1.status", b"", timeout=3)).data)
        assert status["type"] == "status" and status["host"] == "hv1"

        async def answers(name: str) -> dict:
            # Discovery by service name, as `nats micro ping NAME` does; asked again
            # until it answers (a service still starting under load misses a ping).
            reply = json.loads((await nc.request(f"$SRV.PING.{name}", b"", timeout=2)).data)
            return reply if reply.get("name") == name else {}

        agent = await eventually(lambda: answers("ferry-agent"), timeout=15, what="ferry-agent answers $SRV.PING")
        assert agent["metadata"] == {"host": "hv1"}
        await eventually(lambda: answers("ferry-coordinator"), timeout=15, what="ferry-coordinator answers $SRV.PING")
    finally:
        await nc.close()


async def test_cli_hosts_table_and_json(daemons, nats_server, tmp_path):
    start_cluster(daemons, nats_server, tmp_path, hosts=("hv1", "hv2"))
    await wait_hosts(nats_server, all_up(["hv1", "hv2"]), 15, "hosts up")
    env_args = cli_args(nats_server.url)
    table = subprocess.run([script("ferry"), *env_args, "hosts"], capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["HOST", "STATE", "HEALTH"]
    assert lines[1].split()[:5] == ["hv1", "up", "ok", "2/8", "512/16384"]
    assert lines[2].split()[:5] == ["hv2", "up", "ok", "4/9", "1024/16384"]
    raw = subprocess.run([script("ferry"), *env_args, "hosts", "--json"], capture_output=True, text=True, timeout=30)
    reply = json.loads(raw.stdout)
    assert [h["host"] for h in reply["hosts"]] == ["hv1", "hv2"]


def test_cli_without_coordinator_says_so(nats_server):
    out = subprocess.run([script("ferry"), *cli_args(nats_server.url), "hosts"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.strip() == "ferry: unavailable: no coordinator is running (nobody answers ferry.api.lab-admin.hosts)"


def test_cli_without_nats_says_so():
    out = subprocess.run([script("ferry"), "--server", "nats://127.0.0.1:1", "hosts"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.startswith("ferry: unavailable: cannot reach NATS at nats://127.0.0.1:1")
    assert "Traceback" not in out.stderr


def test_agent_with_bad_config_exits_with_a_sentence(tmp_path):
    bad = tmp_path / "agent.toml"
    bad.write_text('host = "hv_1"\n')
    out = subprocess.run([script("ferry-agent"), "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert f"config file {bad} has a problem" in out.stderr and "$.host" in out.stderr and "host name" in out.stderr
    assert "Traceback" not in out.stderr


async def test_an_agent_sends_short_beats_once_asked_and_a_restarted_coordinator_gets_its_report(daemons, nats_server, tmp_path):
    start_cluster(daemons, nats_server, tmp_path, hosts=("hv1",))
    await wait_hosts(nats_server, all_up(["hv1"]), 15, "hv1 up")
    nc = await connect_as(nats_server.url, "c-test", Role.COORDINATOR)
    kinds: list[str] = []

    async def heard(msg):
        kinds.append(json.loads(msg.data)["type"])

    try:
        await nc.subscribe("ferry.host.hv1.status", cb=heard)
        await asyncio.sleep(10 * INTERVAL)
    finally:
        await nc.close()
    # The coordinator asked for a report, so the agent beats between full reports.
    assert kinds.count("beat") >= 5 and kinds[-1] == "beat", kinds
    hosts = await hosts_by_name(nats_server)
    assert hosts["hv1"].state == HostState.UP and hosts["hv1"].last_seen_age < 3 * INTERVAL
    # A coordinator that never saw the full report asks for it: hv1 is up there
    # with its VM at once, not after the agent's next scheduled full report.
    daemons.kill("coordinator")
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    hosts = await wait_hosts(nats_server, all_up(["hv1"]), 10, "hv1 up at the restarted coordinator")
    assert [vm.name for vm in hosts["hv1"].vms] == ["hv1-vm0"]
