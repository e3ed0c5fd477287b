"""HA restart on simulated hypervisors, with a real coordinator, nats-server and
fence-agent programs: a fenced host's HA VMs start elsewhere, high priority
first, each once; a VM without HA is reported; a failed fence restarts nothing
until an operator confirms the host dead. The same on real libvirt + QEMU with
fence_lab and the lock manager: tests/lab/test_ha_restart.py."""

import msgspec
import pytest

from ferry.proto.ha import HaPriority, RestartsReply, RestartState
from ferry.runtime.identity import Role
from tests.integration.test_fencing_simulated import fence_agents, fencing_toml
from tests.support.cluster import CoordinatorEvents, connect_client, wait_hosts_up
from tests.support.ferry_cli import ferry
from tests.support.processes import coordinator_toml, simulated_agent_toml
from tests.support.secured import connect_as
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_a_fenced_hosts_ha_vms_restart_elsewhere_once_and_a_failed_fence_waits_for_the_operator(
    daemons, nats_server, tmp_path
):
    url = nats_server.url
    sbin = fence_agents(tmp_path / "sbin")
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(url, heartbeat_timeout=3) + fencing_toml(sbin))
    guests = {"dead1": [("db", 1, 512), ("web", 1, 256), ("scratch", 1, 256)], "dead2": [("queue", 1, 256)]}
    for host in ("dead1", "dead2", "p1", "p2"):
        daemons.start(host, "ferry-agent", simulated_agent_toml(host, url, tmp_path, vms=guests.get(host, [])))
    events = await CoordinatorEvents().start(url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["dead1", "dead2", "p1", "p2"])
        for vm, priority in (("db", HaPriority.HIGH), ("web", HaPriority.LOW), ("queue", HaPriority.HIGH)):
            await client.ha_set(vm, priority)
        # The coordinator keeps a copy of each running VM's definition while its host lives.
        raw = await connect_as(url, "coordinator", Role.COORDINATOR)
        try:
            copies = await raw.jetstream().key_value("ferry_domains")

            async def kept():
                keys = set(await copies.keys())
                return keys if len(keys) == 4 else None

            await eventually(kept, timeout=20, what="the four definitions kept")
        finally:
            await raw.close()
        shown = ferry(url, "ha", "show", "db", "scratch")
        assert shown.code == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert "; definition kept from dead1 at " in lines[0] and lines[1].startswith("scratch: off (the cluster default)")
        daemons.kill("dead1")
        daemons.kill("dead2")

        async def restarted():
            done = {e.vm: e for e in events.tagged("vm_restarted")}
            return done if {"db", "web"} <= set(done) and events.tagged("host_not_fenced") else None

        done = await eventually(restarted, timeout=60, what="db and web running again")
        story = [(type(e).__struct_config__.tag, getattr(e, "vm", "") or e.host) for e in events.seen
                 if getattr(e, "host", "") == "dead1" or getattr(e, "vm", "") in ("db", "web", "scratch")]
        story = story[story.index(("host_lost", "dead1")):]
        # The whole story, in order: lost, probed, fenced, planned (high first), the VM left alone; then each
        # restart starting on its new host and running there.
        assert [s for s in story if s[0] not in ("vm_restart_starting", "vm_restarted")][:6] == [
            ("host_lost", "dead1"), ("host_probed", "dead1"), ("host_fenced", "dead1"),
            ("vm_restart_queued", "db"), ("vm_restart_queued", "web"), ("vm_not_restarted", "scratch"),
        ], story
        for vm in ("db", "web"):
            assert story.index(("vm_restart_queued", vm)) < story.index(("vm_restart_starting", vm)) < story.index(
                ("vm_restarted", vm)), story
        skipped = next(e for e in events.tagged("vm_not_restarted") if e.vm == "scratch")
        assert skipped.reason.startswith("its HA priority is off")
        for vm in ("db", "web"):
            # Counted from the last heartbeat: at least the 3 s timeout that made the host lost.
            assert done[vm].dest in ("p1", "p2") and done[vm].seconds >= 3

        async def placed_once():
            where = {vm: [h.host for h in (await client.hosts()).hosts
                          if h.state == "up" and any(v.name == vm for v in h.vms)] for vm in ("db", "web", "queue")}
            return where if all(len(where[vm]) == 1 for vm in ("db", "web")) else None

        where = await eventually(placed_once, timeout=20, what="db and web reported by one host each")
        assert where["queue"] == []  # dead2's fence failed: nothing of it runs elsewhere
        assert not [e for e in events.tagged("vm_restart_queued") if e.host == "dead2"]

        listed = ferry(url, "ha", "restarts", "--json")
        assert listed.code == 0, listed.stderr
        records = {r.vm: r for r in msgspec.json.decode(listed.stdout, type=RestartsReply).restarts}
        assert set(records) == {"db", "web"}
        assert all(r.state == RestartState.RUNNING and r.seconds > 0 for r in records.values())
        assert [s.state for s in records["db"].history] == ["queued", "starting", "running"]
        shown = ferry(url, "ha", "restarts", "--host", "dead1")
        assert shown.code == 0 and "db (high) from dead1: running on p" in shown.stdout, shown

        # The operator checked dead2 by hand: its HA VM starts elsewhere now.
        confirmed = ferry(url, "host", "confirm-dead", "dead2", "--reason", "checked the PDU")
        assert confirmed.code == 0, confirmed.stderr

        async def queue_back():
            return next((e for e in events.tagged("vm_restarted") if e.vm == "queue"), None)

        back = await eventually(queue_back, timeout=30, what="queue running again")
        assert back.dest in ("p1", "p2")
        assert len(events.tagged("vm_restarted")) == 3  # each VM restarted once


        # dead1 comes back (its guests shut off, as after a power cut): the definitions of db and web,
        # which run elsewhere now, are removed there; scratch (never restarted) stays; dead1 stays out of
        # placement until an operator lets it back.
        daemons.start("dead1", "ferry-agent", simulated_agent_toml(
            "dead1", url, tmp_path, vms=guests["dead1"], shut_off=["db", "web", "scratch"]))

        async def retired():
            return next(iter(events.tagged("vms_retired")), None)

        event = await eventually(retired, timeout=30, what="db and web retired on dead1")
        assert (sorted(event.vms), event.running) == (["db", "web"], [])

        async def dead1_listing():
            dead1 = next(h for h in (await client.hosts()).hosts if h.host == "dead1")
            return dead1 if dead1.state == "up" and [v.name for v in dead1.vms] == ["scratch"] else None

        dead1 = await eventually(dead1_listing, timeout=20, what="dead1 listing only scratch")
        assert dead1.draining
        assert len(events.tagged("vm_restarted")) == 3
        assert ferry(url, "undrain", "dead1").code == 0
