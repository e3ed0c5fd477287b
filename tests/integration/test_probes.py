"""A simulated agent as a real process runs executable health probes from its probe folder."""

import asyncio
import json

import pytest

from ferry.agent.probes import install_probe
from ferry.proto.codec import Decoder
from ferry.proto.events import HealthChanged
from ferry.proto.host import HealthCheck, HealthState, HostStatus
from ferry.runtime.identity import Role
from tests.support.ferry_cli import ferry
from tests.support.processes import coordinator_toml, simulated_agent_toml
from tests.support.secured import connect_as
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

HOST = "hv1"


async def next_matching(queue: asyncio.Queue, match, timeout: float, what: str):
    async def first():
        while True:
            item = await queue.get()
            if match(item):
                return item

    try:
        return await asyncio.wait_for(first(), timeout)
    except TimeoutError:
        raise AssertionError(f"no {what} within {timeout} s") from None


async def test_a_critical_probe_turns_the_host_critical_and_its_recovery_is_published(daemons, nats_server, tmp_path):
    probes = tmp_path / "probes.d"
    probes.mkdir()
    nc = await connect_as(nats_server.url, "c-test", Role.COORDINATOR)
    events: asyncio.Queue[HealthChanged] = asyncio.Queue()
    statuses: asyncio.Queue[HostStatus] = asyncio.Queue()
    event_decoder = Decoder(HealthChanged, "health event")
    status_decoder = Decoder(HostStatus, "heartbeat")

    async def on_event(msg):
        if json.loads(msg.data).get("type") == "health_changed":
            events.put_nowait(event_decoder.decode(msg.data))

    async def on_status(msg):
        statuses.put_nowait(status_decoder.decode(msg.data))

    try:
        await nc.subscribe(f"ferry.host.{HOST}.event", cb=on_event)
        await nc.subscribe(f"ferry.host.{HOST}.status", cb=on_status)
        await nc.flush()
        daemons.start(HOST, "ferry-agent", simulated_agent_toml(HOST, nats_server.url, tmp_path, probe_dir=probes, probe_timeout=5.0))
        await next_matching(statuses, lambda s: s.health == HealthState.OK, 15, "healthy heartbeat")

        install_probe(probes, "raid", "echo 'disk array degraded | failed=1'; echo 'md0: sdb failed'; exit 2")
        degraded = HealthCheck("probe:raid", HealthState.CRITICAL, "disk array degraded")
        went_bad = await next_matching(
            events, lambda e: e.current == HealthState.CRITICAL, 10, "health_changed to critical"
        )
        assert went_bad.host == HOST and went_bad.previous == HealthState.OK
        assert degraded in went_bad.checks
        # Every check travels with the event, not only the one that changed.
        assert {c.name for c in went_bad.checks} == {"hypervisor", "memory", "images_disk", "probe:raid"}
        status = await next_matching(statuses, lambda s: s.health == HealthState.CRITICAL, 5, "critical heartbeat")
        assert degraded in status.checks

        install_probe(probes, "raid", "echo 'OK - md0 clean'; exit 0")
        recovered = await next_matching(events, lambda e: e.current == HealthState.OK, 10, "health_changed to ok")
        assert recovered.previous == HealthState.CRITICAL
        assert HealthCheck("probe:raid", HealthState.OK, "OK - md0 clean") in recovered.checks
        await next_matching(statuses, lambda s: s.health == HealthState.OK, 5, "healthy heartbeat again")
    finally:
        await nc.close()
    assert '"event": "health_changed"' in daemons.log(HOST)


async def test_a_hanging_probe_is_only_a_warning_and_the_agent_keeps_beating(daemons, nats_server, tmp_path):
    probes = tmp_path / "probes.d"
    probes.mkdir()
    install_probe(probes, "stuck", "sleep 60")
    nc = await connect_as(nats_server.url, "c-test", Role.COORDINATOR)
    statuses: asyncio.Queue[HostStatus] = asyncio.Queue()
    status_decoder = Decoder(HostStatus, "heartbeat")

    async def on_status(msg):
        statuses.put_nowait(status_decoder.decode(msg.data))

    try:
        await nc.subscribe(f"ferry.host.{HOST}.status", cb=on_status)
        await nc.flush()
        daemons.start(HOST, "ferry-agent", simulated_agent_toml(HOST, nats_server.url, tmp_path, probe_dir=probes, probe_timeout=0.5))
        status = await next_matching(statuses, lambda s: s.seq >= 3, 15, "three heartbeats")
        assert status.health == HealthState.WARNING
        assert HealthCheck("probe:stuck", HealthState.WARNING, "probe stuck timed out after 0.5 s") in status.checks
    finally:
        await nc.close()


async def test_ferry_hosts_prints_a_probe_message_with_brackets_as_text(daemons, nats_server, tmp_path):
    probes = tmp_path / "probes.d"
    probes.mkdir()
    install_probe(probes, "md", "echo 'md array [/dev/md0] degraded'; exit 1")
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    daemons.start(HOST, "ferry-agent", simulated_agent_toml(HOST, nats_server.url, tmp_path, probe_dir=probes))

    async def shown():
        out = ferry(nats_server.url, "hosts")
        return out if "probe:md" in out.stdout else None

    out = await eventually(shown, timeout=20, every=0.5, what="the probe's check in ferry hosts")
    assert out.code == 0, out.stderr
    assert f"{HOST}: probe:md warning: md array [/dev/md0] degraded" in out.stdout
