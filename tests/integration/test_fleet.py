"""Scale: 500 simulated hosts with ten VMs each, all in one fleet process
(tests/support/fleet.py), against a real nats-server and coordinator.
bench/scale measures 5,000; this checks what must hold at any size."""

import asyncio
import json
import time

import pytest

from ferry.cli.client import FerryClient
from ferry.coordinator.session_history import max_overlap
from ferry.lab.processes import cpu_seconds, rss_mib
from ferry.proto.api import HostsReply, HostsRequest, MigrateRequest, SessionsRequest
from ferry.proto.codec import Decoder, encode
from ferry.proto.drain import DrainRequest, DrainsRequest, DrainState, ItemState
from ferry.proto.session import SessionState
from tests.support.cluster import connect_client, vms_by_host
from tests.support.fleet import write_fleet
from tests.support.processes import coordinator_toml
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.integration

HOSTS = 500
VMS_PER_HOST = 10


async def reply_sizes(client: FerryClient, verb: str, request) -> list[int]:
    """The size of each raw reply to `request` (every page of `hosts`)."""
    sizes = []
    while True:
        raw = await client.request_raw(verb, encode(request))
        sizes.append(len(raw))
        if verb != "hosts":
            return sizes
        page = Decoder(HostsReply, "hosts").decode(raw)
        if not page.more:
            return sizes
        request = HostsRequest(after=page.next_after)


def log_levels(text: str) -> set[str]:
    return {json.loads(line).get("level", "") for line in text.splitlines() if line.startswith("{")}


async def test_500_hosts_with_5000_vms_come_up_in_pages_under_max_payload_and_one_vm_migrates(daemons, nats_server, tmp_path):
    coordinator = daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    names = write_fleet(tmp_path / "fleet", nats_server.url, HOSTS, VMS_PER_HOST)
    started = time.monotonic()
    fleet = daemons.start_fleet("fleet", tmp_path / "fleet")
    async with await connect_client(nats_server) as client:

        async def all_up():
            where = await vms_by_host(client, up_only=True)
            return set(where) == set(names) and sum(map(len, where.values())) == HOSTS * VMS_PER_HOST

        await eventually(all_up, timeout=60, every=0.5, what=f"{HOSTS} hosts with {HOSTS * VMS_PER_HOST} VMs up")
        came_up = time.monotonic() - started
        # Every host in several replies, none of them over what NATS accepts.
        sizes = await reply_sizes(client, "hosts", HostsRequest())
        assert len(sizes) > 1 and max(sizes) <= client.max_payload, (sizes, client.max_payload)
        summary = await client.hosts(HostsRequest(vms=False))
        assert len(summary.hosts) == HOSTS and {h.vm_count for h in summary.hosts} == {VMS_PER_HOST}

        # Idle cost: nothing asks the fleet anything while it is measured.
        fleet_before, coordinator_before = cpu_seconds(fleet.pid), cpu_seconds(coordinator.pid)
        window = time.monotonic()
        await asyncio.sleep(5)
        window = time.monotonic() - window
        fleet_idle = (cpu_seconds(fleet.pid) - fleet_before) / window
        coordinator_idle = (cpu_seconds(coordinator.pid) - coordinator_before) / window
        print(
            f"\nfleet of {HOSTS} hosts / {HOSTS * VMS_PER_HOST} VMs up in {came_up:.1f} s;"
            f" idle CPU: fleet {100 * fleet_idle:.1f}% of a core ({rss_mib(fleet.pid):.0f} MiB RSS),"
            f" coordinator {100 * coordinator_idle:.1f}%"
        )

        vm, source, dest = f"{names[0]}-vm1", names[0], names[1]
        asked = time.monotonic()
        session = await client.migrate(MigrateRequest(vm=vm, dest=dest))
        final = await session_end(client, session.id)
        print(f"migration of {vm} {source} -> {dest} ended in {time.monotonic() - asked:.1f} s")
        assert final.state == SessionState.COMPLETED, final.reason
        assert (final.source, final.dest) == (source, dest)

        async def moved():
            carriers = [host for host, vms in (await vms_by_host(client, up_only=True)).items() if vm in vms]
            return carriers == [dest]

        await eventually(moved, timeout=10, what=f"{vm} reported on {dest} only")

    assert fleet.poll() is None, daemons.log("fleet")
    # Quiet at its default level: a healthy fleet logs nothing worth a warning.
    assert log_levels(daemons.log("fleet")) <= {"info", "debug"}, daemons.log("fleet")[-2000:]
    # The budget for idle: under a third of one core (it measures ~2%).
    assert fleet_idle < 0.3


async def test_a_bad_config_costs_only_its_own_agent(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    names = write_fleet(tmp_path / "fleet", nats_server.url, 2, 1)
    (tmp_path / "fleet" / "broken.toml").write_text('host = "has a space"\n')
    fleet = daemons.start_fleet("fleet", tmp_path / "fleet")
    async with await connect_client(nats_server) as client:

        async def up():
            return set(await vms_by_host(client, up_only=True)) == set(names)

        await eventually(up, timeout=20, what=f"{names} up")
    assert fleet.poll() is None
    assert "agent_config_invalid" in daemons.log("fleet")


def test_a_fleet_where_no_agent_can_run_exits_non_zero(daemons, tmp_path):
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / "broken.toml").write_text("host = \n")
    fleet = daemons.start_fleet("fleet", tmp_path / "fleet")
    assert fleet.wait(timeout=30) == 1
    assert "fleet_failed" in daemons.log("fleet")


# Each host keeps 1024 MiB for itself and its ten 1 GiB VMs use 10240: 3072 MiB
# are left, room for two more VMs with the 128 MiB margin but not three. The
# 495 hosts that stay can take 990 VMs; the 5 drained ones carry 50.
TIGHT_MEMORY_MIB = 14336
HOST_RESERVED_MIB = 1024
MAX_VMS_PER_HOST = 12
DRAINED = 5


async def test_draining_five_of_500_hosts_at_once_respects_every_limit_and_capacity(daemons, nats_server, tmp_path):
    daemons.start(
        "coordinator", "ferry-coordinator", coordinator_toml(nats_server.url) + "[drain]\nretry_delay = 0.5\n"
    )
    names = write_fleet(
        tmp_path / "fleet", nats_server.url, HOSTS, VMS_PER_HOST, memory_mib=TIGHT_MEMORY_MIB, speed_mib_per_s=2048
    )
    fleet = daemons.start_fleet("fleet", tmp_path / "fleet")
    drained = names[:DRAINED]
    async with await connect_client(nats_server) as client:

        async def all_up():
            where = await vms_by_host(client, up_only=True)
            return set(where) == set(names) and sum(map(len, where.values())) == HOSTS * VMS_PER_HOST

        await eventually(all_up, timeout=60, every=0.5, what="the fleet up")
        limits = (await client.limits()).limits
        started = time.monotonic()
        replies = await asyncio.gather(*(client.drain(DrainRequest(host=h)) for h in drained))
        assert all(len(r.drain.items) == VMS_PER_HOST for r in replies)

        async def all_done():
            drains = await client.drains()
            return drains if all(d.state == DrainState.DONE for d in drains) and len(drains) == DRAINED else None

        drains = await eventually(all_done, timeout=180, every=0.5, what="five drains done")
        took = time.monotonic() - started
        items = [i for d in drains for i in d.items]
        # A VM sent to a host just before that host's own drain began is moved again
        # by that drain: there may be a few more items than the 50 VMs.
        assert {i.vm for i in items} == {f"{h}-vm{n}" for h in drained for n in range(1, VMS_PER_HOST + 1)}
        assert all(i.state == ItemState.MOVED for i in items), [i for i in items if i.state != ItemState.MOVED]

        for verb, request in (("sessions", SessionsRequest(limit=10_000)), ("drains", DrainsRequest())):
            assert max(await reply_sizes(client, verb, request)) <= client.max_payload
        sessions = [s for s in await client.sessions(SessionsRequest(limit=10_000)) if s.drain_host in drained]
        moved = [s for s in sessions if s.state == SessionState.COMPLETED]
        assert len(moved) == len(items)
        # Every limit, from the session records alone.
        assert max(max_overlap(sessions, key=lambda s: "cluster").values()) == limits.cluster
        assert max(max_overlap(sessions, key=lambda s: s.source).values()) <= limits.outbound_per_host
        assert max(max_overlap(sessions, key=lambda s: s.dest).values()) <= limits.inbound_per_host
        for s in moved:
            marked = next(d.started_at for d in drains if d.host == s.dest) if s.dest in drained else None
            admitted = next(t.at for t in s.history if t.state == SessionState.PREPARING)
            assert marked is None or admitted < marked, f"{s.vm} went to {s.dest} after it was marked draining"

        async def settled():
            # Reports lag a move by up to a heartbeat: wait until they agree.
            where = await vms_by_host(client, up_only=True)
            everywhere = [vm for vms in where.values() for vm in vms]
            agreed = len(everywhere) == len(set(everywhere)) == HOSTS * VMS_PER_HOST
            return where if agreed and not any(where[h] for h in drained) else None

        # No VM lost, none doubled, the drained hosts empty.
        where = await eventually(settled, timeout=10, what="every VM reported once, none on a drained host")
        # Capacity: no host took more than its memory allows.
        assert max(len(vms) for vms in where.values()) <= MAX_VMS_PER_HOST
        hosts = {h.host: h for h in (await client.hosts()).hosts}
        for name in names:
            used = hosts[name].capacity.memory_used_mib
            assert used <= TIGHT_MEMORY_MIB - HOST_RESERVED_MIB, f"{name} holds {used} MiB of VMs"
        retries = sum(i.attempts - 1 for i in items)
        print(f"\ndrained {DRAINED} hosts ({len(items)} VMs) in {took:.1f} s; {retries} retries")
    assert fleet.poll() is None, daemons.log("fleet")
