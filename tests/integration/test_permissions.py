"""A real nats-server under the authorization config `ferry-admin identities`
writes: nobody acts on a message their identity may not send, and who asked is
recorded from the subject NATS let them publish on."""

import asyncio
import json
import time
import uuid

import msgspec
import nats
import nats.errors
import pytest

from ferry.lab.processes import rss_mib
from ferry.proto import subjects
from ferry.proto.agent import SessionResult
from ferry.proto.api import MigrateRequest
from ferry.proto.codec import encode
from ferry.proto.drain import DrainRequest
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import Capacity, HostStatus, ReportRequest
from ferry.proto.limits import LimitsRequest
from ferry.proto.session import SessionState
from ferry.runtime.config import NatsSettings
from ferry.runtime.connection import connect_error, connect_once
from ferry.runtime.identity import Role
from tests.support.cluster import CoordinatorEvents, vms_by_host, wait_hosts_up
from tests.support.processes import coordinator_toml, simulated_agent_toml
from tests.support.secured import connect_as, settings_for
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.integration

from ferry.cli.client import FerryClient  # noqa: E402


class Refusals:
    """The permission errors NATS sends one connection."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def on_error(self, exc: Exception) -> None:
        self.seen.append(str(exc).lower())

    async def denied(self, subject: str, timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("permissions violation" in s and subject.lower() in s for s in self.seen):
                return True
            await asyncio.sleep(0.05)
        return False


async def connect_refused(urls, name, role) -> tuple[nats.NATS, Refusals]:
    refusals = Refusals()
    return await connect_as(urls, name, role, error_cb=refusals.on_error), refusals


def start(daemons, nats_server, tmp_path, **agents) -> None:
    daemons.start("c1", "ferry-coordinator", coordinator_toml(nats_server.url, name="c1", heartbeat_timeout=3.0))
    for host, kwargs in agents.items():
        daemons.start(host, "ferry-agent", simulated_agent_toml(host, nats_server.url, tmp_path, **kwargs))


async def test_an_anonymous_client_cannot_connect(nats_server):
    settings = settings_for(nats_server.url)
    anonymous = NatsSettings(servers=settings.servers, tls_ca=settings.tls_ca, connect_timeout=2.0)
    with pytest.raises(Exception) as caught:
        await connect_once(anonymous, name="anonymous")
    assert connect_error(anonymous, caught.value).code == ErrorCode.UNAUTHORIZED
    # Nor without TLS, whatever it claims.
    plain = NatsSettings(servers=[settings.servers[0].replace("tls://", "nats://")], connect_timeout=2.0)
    with pytest.raises(Exception):
        await connect_once(plain, name="plain")


async def test_a_host_speaks_only_for_itself_and_hears_only_its_own_verbs(daemons, nats_server, tmp_path):
    start(daemons, nats_server, tmp_path, a={"vms": [("a-vm", 1, 256)]}, b={"vms": [("b-vm", 1, 256)]})
    admin = await FerryClient.connect(settings_for(nats_server.url))
    events = await CoordinatorEvents().start(nats_server.url)
    a, refusals = await connect_refused(nats_server.url, "a", Role.HOST)
    try:
        await wait_hosts_up(admin, ["a", "b"])
        # A heartbeat for b under b's subject: NATS drops it.
        forged = HostStatus(
            host="b", seq=10**9, boot_id="forged", sent_at=time.time(), interval=0.5,
            capacity=Capacity(cpus=1, memory_total_mib=1, memory_free_mib=1), vms=[],
        )
        await a.publish(subjects.host_status("b"), encode(forged))
        assert await refusals.denied(subjects.host_status("b"))
        # Under its own subject, claiming to be b: the coordinator refuses it.
        await a.publish(subjects.host_status("a"), encode(forged))
        # Nor may it talk to agents, or listen for another host's verbs (to answer b's prepare).
        await a.publish(subjects.agent_verb("b", "abort"), b"{}")
        assert await refusals.denied(subjects.agent_verb("b", "abort"))
        await a.subscribe(subjects.agent_verb("b", "prepare"))
        assert await refusals.denied(subjects.agent_verb("b", "prepare"))
        # Nor call the API.
        await a.publish(subjects.api("drain", caller="a"), encode(DrainRequest(host="b")))
        assert await refusals.denied(subjects.api("drain", caller="a"))

        await asyncio.sleep(2.0)  # several sweeps at a 0.5 s heartbeat
        hosts = {h.host: h for h in (await admin.hosts()).hosts}
        assert hosts["b"].state == "up" and [vm.name for vm in hosts["b"].vms] == ["b-vm"]
        assert "heartbeat_host_mismatch" in daemons.log("c1")
        assert not events.tagged("host_lost") and not events.tagged("drain_started")
    finally:
        await a.close()
        await events.close()
        await admin.close()


async def test_a_forged_heartbeat_of_a_host_itself_cannot_hide_its_vms_or_mark_it_lost(daemons, nats_server, tmp_path):
    start(daemons, nats_server, tmp_path, a={"vms": [("a-vm", 1, 256)]})
    admin = await FerryClient.connect(settings_for(nats_server.url))
    events = await CoordinatorEvents().start(nats_server.url)
    # The host's own identity (a stolen seed, a buggy agent): the coordinator still disbelieves.
    a = await connect_as(nats_server.url, "a", Role.HOST)
    try:
        await wait_hosts_up(admin, ["a"])
        real = await _one_heartbeat(nats_server.url, "a")
        base = dict(host="a", sent_at=time.time(), capacity=real.capacity, vms=[])
        boot = real.boot_id
        await a.publish(subjects.host_status("a"), encode(HostStatus(seq=2**62, boot_id=boot, interval=0.5, **base)))
        await a.publish(subjects.host_status("a"), encode(HostStatus(seq=1, boot_id="other", interval=0.0, **base)))
        await a.flush()
        await asyncio.sleep(3.0)
        host = next(h for h in (await admin.hosts()).hosts if h.host == "a")
        assert host.state == "up" and [vm.name for vm in host.vms] == ["a-vm"], "the real heartbeats still count"
        assert host.last_seen_age < 1.5
        reasons = [e.reason for e in events.tagged("heartbeat_refused")]
        assert any("jumps" in r for r in reasons) and any("interval 0" in r for r in reasons), reasons
        assert not events.tagged("host_lost")
    finally:
        await a.close()
        await events.close()
        await admin.close()


async def _one_heartbeat(url, host: str) -> HostStatus:
    """A real heartbeat of `host`, heard as a coordinator hears it."""
    nc = await connect_as(url, "c-test", Role.COORDINATOR)
    try:
        sub = await nc.subscribe(subjects.host_status(host))
        # Between full reports an agent sends short beats: ask for the report.
        await nc.publish(subjects.agent_verb(host, "report"), encode(ReportRequest()))
        while True:
            msg = await sub.next_msg(timeout=5)
            if json.loads(msg.data).get("type") == "status":
                return msgspec.json.decode(msg.data, type=HostStatus)
    finally:
        await nc.close()


async def test_a_viewer_reads_but_cannot_migrate_cancel_drain_or_change_limits(daemons, nats_server, tmp_path):
    start(daemons, nats_server, tmp_path, a={"vms": [("a-vm", 1, 256)]}, b={})
    viewer_settings = settings_for(nats_server.url, "bob", Role.VIEWER)
    admin = await FerryClient.connect(settings_for(nats_server.url, "alice", Role.ADMIN))
    viewer = await FerryClient.connect(viewer_settings)
    raw, refusals = await connect_refused(nats_server.url, "bob", Role.VIEWER)
    try:
        await wait_hosts_up(viewer, ["a", "b"])
        assert (await viewer.limits()).limits == (await admin.limits()).limits
        # The client says so at once...
        with pytest.raises(FerryError) as caught:
            await viewer.migrate(MigrateRequest(vm="a-vm", dest="b"))
        assert caught.value.code == ErrorCode.FORBIDDEN
        # ...and NATS enforces it for any client: under its own token, and under an admin's.
        for subject, payload in [
            (subjects.api("migrate", caller="bob"), encode(MigrateRequest(vm="a-vm", dest="b"))),
            (subjects.api("cancel", caller="bob"), b'{"id": "abcdef123456"}'),
            (subjects.api("drain", caller="bob"), encode(DrainRequest(host="a"))),
            (subjects.api("set_limits", caller="bob"), encode(LimitsRequest(cluster=1))),
            (subjects.via_api("c1", "undrain", caller="bob"), b'{"host": "a"}'),
            (subjects.api("migrate", caller="alice"), encode(MigrateRequest(vm="a-vm", dest="b"))),
        ]:
            with pytest.raises(nats.errors.TimeoutError):
                await raw.request(subject, payload, timeout=1.0)
            assert await refusals.denied(subject), subject
        assert await admin.sessions() == [] and await admin.drains() == []
        assert (await admin.limits()).limits.cluster != 1
    finally:
        await raw.close()
        await viewer.close()
        await admin.close()


async def test_who_asked_is_recorded_in_the_session_the_drain_and_the_events(daemons, nats_server, tmp_path):
    start(daemons, nats_server, tmp_path, a={"vms": [("a-vm", 1, 256), ("a-2", 1, 256)], "migration_mib_per_s": 64}, b={})
    events = await CoordinatorEvents().start(nats_server.url)
    alice = await FerryClient.connect(settings_for(nats_server.url, "alice", Role.ADMIN))
    carol = await FerryClient.connect(settings_for(nats_server.url, "carol", Role.ADMIN))
    try:
        await wait_hosts_up(alice, ["a", "b"])
        moved = await session_end(alice, (await alice.migrate(MigrateRequest(vm="a-vm", dest="b"))).id)
        assert moved.state == SessionState.COMPLETED and moved.requested_by == "alice"
        assert {e.requested_by for e in events.tagged("session_changed") if e.session_id == moved.id} == {"alice"}

        slow = await alice.migrate(MigrateRequest(vm="a-2", dest="b"))
        cancelled = await carol.cancel(slow.id)
        assert cancelled.cancelled_by == "carol"
        ended = await session_end(alice, slow.id)
        assert ended.cancelled_by == "carol" and ended.requested_by == "alice"

        drain = (await carol.drain(DrainRequest(host="b"))).drain
        assert drain.requested_by == "carol"
        (started,) = await eventually(lambda: _async(events.tagged("drain_started")), timeout=5, what="drain_started")
        assert started.requested_by == "carol"
        await alice.undrain("b")
        (undrained,) = await eventually(lambda: _async(events.tagged("host_undrained")), timeout=5, what="host_undrained")
        assert undrained.by == "alice"
        await alice.limits(LimitsRequest(cluster=3))
        (changed,) = await eventually(lambda: _async(events.tagged("limits_changed")), timeout=5, what="limits_changed")
        assert changed.by == "alice" and changed.after.cluster == 3
    finally:
        await alice.close()
        await carol.close()
        await events.close()


async def _async(value):
    return value


async def test_a_forged_session_result_from_another_host_does_not_change_the_session(daemons, nats_server, tmp_path):
    start(daemons, nats_server, tmp_path, a={"vms": [("big", 1, 2048)], "migration_mib_per_s": 256}, b={}, c={})
    admin = await FerryClient.connect(settings_for(nats_server.url))
    c, refusals = await connect_refused(nats_server.url, "c", Role.HOST)
    try:
        await wait_hosts_up(admin, ["a", "b", "c"])
        session = await admin.migrate(MigrateRequest(vm="big", dest="b"))

        async def migrating():
            return (await admin.session(session.id)).state == SessionState.MIGRATING

        await eventually(migrating, timeout=20, what="migrating")
        forged = SessionResult(session_id=session.id, vm="big", host="a", at=time.time(), ok=False, reason="forged")
        # Under a's subject NATS drops it; under c's own, the coordinator does.
        await c.publish(subjects.host_session("a", session.id), encode(forged))
        assert await refusals.denied(subjects.host_session("a", session.id))
        await c.publish(subjects.host_session("c", session.id), encode(forged))
        await c.flush()
        ended = await session_end(admin, session.id, timeout=60)
        assert ended.state == SessionState.COMPLETED, ended.reason
        assert "big" in (await vms_by_host(admin))["b"] or await eventually(
            lambda: _has(admin, "b", "big"), timeout=10, what="big on b"
        )
        assert "session_update_refused" in daemons.log("c1")
    finally:
        await c.close()
        await admin.close()


async def _has(client, host, vm) -> bool:
    return vm in (await vms_by_host(client))[host]


async def test_a_flood_of_forged_session_ids_costs_the_coordinator_no_memory(daemons, nats_server, tmp_path):
    start(daemons, nats_server, tmp_path, a={"vms": [("a-vm", 1, 256)]})
    admin = await FerryClient.connect(settings_for(nats_server.url))
    a = await connect_as(nats_server.url, "a", Role.HOST)
    pid = daemons.procs["c1"].pid
    try:
        await wait_hosts_up(admin, ["a"])

        async def flood(count: int) -> None:
            for i in range(count):
                sid = uuid.uuid4().hex[:12]
                result = SessionResult(session_id=sid, vm="a-vm", host="a", at=time.time(), ok=True, reason="x" * 200)
                await a.publish(subjects.host_session("a", sid), encode(result))
                if i % 1000 == 0:
                    await a.flush()
            await a.flush()

        await flood(5_000)  # warm: allocator pools, log buffers
        await asyncio.sleep(1.0)
        before = rss_mib(pid)
        await flood(50_000)
        await asyncio.sleep(2.0)
        middle = rss_mib(pid)
        await flood(50_000)
        await asyncio.sleep(2.0)
        after = rss_mib(pid)
        print(
            f"coordinator RSS {before:.1f} MiB before, {middle:.1f} MiB after 50,000 forged session ids,"
            f" {after:.1f} MiB after 100,000"
        )
        # Nothing is kept per id: the second 50,000 cost what the first did, about nothing.
        assert after - before < 8, f"RSS grew {after - before:.1f} MiB"
        assert after - middle < 4, f"RSS grew {after - middle:.1f} MiB over the second 50,000"
        assert daemons.procs["c1"].poll() is None
        assert (await admin.hosts()).hosts[0].state == "up"
    finally:
        await a.close()
        await admin.close()
