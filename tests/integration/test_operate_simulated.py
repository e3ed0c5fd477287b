"""`ferry cordon` / `uncordon`, `force-complete` and `downtime` through the real
CLI, real processes and a real nats-server, on the simulated hypervisor backend
(whose guests dirty memory at a set rate, so a migration runs until told).
The libvirt side of force-complete and downtime is proven in
tests/lab/test_force_complete.py."""

import subprocess

import msgspec
import pytest

from ferry.lab.nats_security import LAB_ADMIN
from ferry.proto.api import CordonReply, HostsReply, MigrateRequest
from ferry.proto.convergence import ActionKind
from ferry.proto.drain import DrainState, ItemState
from ferry.proto.session import MigrateOptions, Session, SessionState
from ferry.runtime.identity import Role
from tests.support.cluster import CoordinatorEvents, connect_client, vms_by_host, wait_hosts_up
from tests.support.ferry_cli import CliResult, ferry
from tests.support.processes import coordinator_toml, script, simulated_agent_toml
from tests.support.secured import cli_args
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.integration


def ferry_as_viewer(url, *args: str) -> CliResult:
    proc = subprocess.run(
        [script("ferry"), *cli_args(url, "bob", Role.VIEWER), *args], capture_output=True, text=True, timeout=60
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def hosts_json(url) -> dict:
    shown = ferry(url, "hosts", "--json", "--vms")
    assert shown.code == 0, shown.stderr
    return {h.host: h for h in msgspec.json.decode(shown.stdout, type=HostsReply).hosts}


def host_row(url, host: str) -> str:
    shown = ferry(url, "hosts")
    assert shown.code == 0, shown.stderr
    return next(line for line in shown.stdout.splitlines() if line.split() and line.split()[0] == host)


async def test_a_cordoned_host_gets_no_new_vm_keeps_its_own_and_stays_cordoned_across_a_restart(daemons, nats_server, tmp_path):
    url = nats_server.url
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(url))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", url, tmp_path, vms=[("g1", 1, 256), ("g2", 1, 256)], migration_mib_per_s=512))
    # `big` has the most room: placement would choose it but for the cordon. It runs a VM of its own.
    daemons.start("big", "ferry-agent", simulated_agent_toml("big", url, tmp_path, memory_mib=65536, vms=[("own", 1, 256)]))
    daemons.start("small", "ferry-agent", simulated_agent_toml("small", url, tmp_path, migration_mib_per_s=512))
    events = await CoordinatorEvents().start(url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "big", "small"])
        cordoned = ferry(url, "cordon", "big", "--reason", "firmware update")
        assert cordoned.code == 0, cordoned.stderr
        assert "big is cordoned: no new VMs are placed there; the VMs it runs stay" in cordoned.stdout
        again = ferry(url, "cordon", "big", "--reason", "another", "--json")
        assert again.code == 0, again.stderr
        reply = msgspec.json.decode(again.stdout, type=CordonReply)
        assert not reply.changed and reply.cordon.reason == "firmware update" and reply.cordon.by == LAB_ADMIN

        assert "(cordoned)" in host_row(url, "big") and "(cordoned)" not in host_row(url, "small")
        shown = hosts_json(url)
        assert shown["big"].cordoned and not shown["small"].cordoned
        assert (shown["big"].cordon.reason, shown["big"].cordon.by) == ("firmware update", LAB_ADMIN)
        assert "own" in {vm.name for vm in shown["big"].vms}, "what runs there stays"

        refused = ferry(url, "migrate", "g1", "--to", "big")
        assert refused.code == 1
        assert "ferry: host_cordoned: the destination big is cordoned (firmware update)" in refused.stderr

        session = await client.migrate(MigrateRequest(vm="g1"))
        final = await session_end(client, session.id)
        assert (final.state, final.dest) == (SessionState.COMPLETED, "small"), final.reason

        plan = ferry(url, "migrate", "g2", "--dry-run", "--json")
        assert plan.code == 0, plan.stderr
        assert '"dest": "small"' in plan.stdout and "big is cordoned" in plan.stdout

        async def only_g2_left():
            return (await vms_by_host(client))["src"] == {"g2"}

        await eventually(only_g2_left, timeout=10, what="src reporting g2 alone")
        drained = ferry(url, "drain", "src", "--wait", "--json")
        assert drained.code == 0, drained.stdout + drained.stderr
        (drain,) = await client.drains("src")
        assert drain.state == DrainState.DONE
        assert [(i.vm, i.state, i.dest) for i in drain.items] == [("g2", ItemState.MOVED, "small")]

        # The mark is KV's: a coordinator that starts again reads it.
        daemons.kill("coordinator")
        daemons.start("coordinator", "ferry-coordinator", coordinator_toml(url))

        async def still_cordoned():
            return hosts_json(url)["big"].cordoned

        await eventually(still_cordoned, timeout=20, what="big cordoned after the restart")
        refused = await eventually(
            lambda: _refused(url), timeout=20, what="the new leader refusing --to big"
        )
        assert "host_cordoned" in refused.stderr

        forbidden = ferry_as_viewer(url, "uncordon", "big")
        assert forbidden.code == 1 and "ferry: forbidden:" in forbidden.stderr
        assert hosts_json(url)["big"].cordoned

        uncordoned = ferry(url, "uncordon", "big")
        assert uncordoned.code == 0, uncordoned.stderr
        assert "big is no longer cordoned: new VMs may be placed there again" in uncordoned.stdout
        assert not hosts_json(url)["big"].cordoned and "(cordoned)" not in host_row(url, "big")
        twice = ferry(url, "uncordon", "big")
        assert twice.code == 1 and "ferry: not_found: big is not cordoned" in twice.stderr

    async def announced():
        return "host_uncordoned" in events.tags()

    await eventually(announced, timeout=5, what="host_uncordoned event")
    (cordon_event,) = events.tagged("host_cordoned")
    assert (cordon_event.host, cordon_event.reason, cordon_event.by) == ("big", "firmware update", LAB_ADMIN)
    assert events.tagged("host_uncordoned")[0].by == LAB_ADMIN
    await events.close()


async def _refused(url) -> CliResult | None:
    result = ferry(url, "migrate", "g2", "--to", "big")
    return result if "host_cordoned" in result.stderr else None


async def test_a_viewer_may_not_cordon(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    daemons.start("a", "ferry-agent", simulated_agent_toml("a", nats_server.url, tmp_path))
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["a"])
        for args in (["cordon", "a"], ["force-complete", "abcdef123456"], ["downtime", "abcdef123456", "500"]):
            refused = ferry_as_viewer(nats_server.url, *args)
            assert refused.code == 1 and "ferry: forbidden: bob is a viewer" in refused.stderr, refused.stderr
        assert not hosts_json(nats_server.url)["a"].cordoned


# A guest that dirties its memory as fast as it is copied (256 MiB/s): it never
# finishes by itself. The `plain` policy has no lever of its own, and aborts
# only after 30 s without progress.
BUSY = [("busy", 1, 512, "", 256)]


async def running(client, options: MigrateOptions) -> Session:
    """A migration of the busy guest, once the source has sent a progress sample."""
    started = await client.migrate(MigrateRequest(vm="busy", options=options))

    async def copying():
        s = await client.session(started.id)
        return s if s.state == SessionState.MIGRATING and s.progress is not None else None

    return await eventually(copying, timeout=20, what="the migration copying")


def busy_cluster(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, vms=BUSY))
    daemons.start("dst", "ferry-agent", simulated_agent_toml("dst", nats_server.url, tmp_path))


async def test_force_complete_switches_to_postcopy_when_the_session_allows_it(daemons, nats_server, tmp_path):
    busy_cluster(daemons, nats_server, tmp_path)
    events = await CoordinatorEvents().start(nats_server.url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst"])
        session = await running(client, MigrateOptions(policy="plain", allow_postcopy=True))
        forced = ferry(nats_server.url, "force-complete", session.id)
        assert forced.code == 0, forced.stderr
        assert f"session {session.id} (postcopy): switched to post-copy: busy runs on dst now" in forced.stdout
        final = await session_end(client, session.id)
        assert final.state == SessionState.COMPLETED, final.reason
        (action,) = [a for a in final.steering if a.kind == ActionKind.POSTCOPY]
        assert action.reason.startswith(f"force-complete by {LAB_ADMIN}: switching to post-copy with ")
        assert [t.state for t in final.history][-3:] == ["migrating", "postcopy", "completed"]
        again = ferry(nats_server.url, "force-complete", session.id)
        assert again.code == 1 and f"ferry: not_running: session {session.id} has already ended" in again.stderr
    forced_events = events.tagged("migration_forced")
    assert [(e.session_id, e.action, e.by) for e in forced_events] == [(session.id, "postcopy", LAB_ADMIN)]
    postcopy = [e for e in events.tagged("session_changed") if e.state == SessionState.POSTCOPY]
    assert len(postcopy) == 1, "post-copy is announced once, whoever reported it first"
    await events.close()


async def test_force_complete_pauses_the_guest_when_postcopy_is_not_allowed(daemons, nats_server, tmp_path):
    busy_cluster(daemons, nats_server, tmp_path)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst"])
        session = await running(client, MigrateOptions(policy="plain"))
        forced = ferry(nats_server.url, "force-complete", session.id, "--json")
        assert forced.code == 0, forced.stderr
        shown = msgspec.json.decode(forced.stdout, type=Session)
        (pause,) = [a for a in shown.steering if a.kind == ActionKind.PAUSE]
        # 1.5 x what is left at 256 MiB/s: at least the session's 300 ms.
        assert pause.value >= 300 and "post-copy not allowed" in pause.reason
        final = await session_end(client, session.id)
        assert final.state == SessionState.COMPLETED, final.reason
        assert SessionState.POSTCOPY not in [t.state for t in final.history]
        assert [a.kind for a in final.steering if a.kind in (ActionKind.PAUSE, ActionKind.POSTCOPY)] == [ActionKind.PAUSE]


async def test_downtime_lets_a_running_migration_finish(daemons, nats_server, tmp_path):
    busy_cluster(daemons, nats_server, tmp_path)
    events = await CoordinatorEvents().start(nats_server.url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst"])
        unknown = ferry(nats_server.url, "downtime", "abcdef123456", "500")
        assert unknown.code == 1 and "ferry: not_found:" in unknown.stderr
        session = await running(client, MigrateOptions(policy="plain"))
        too_long = ferry(nats_server.url, "downtime", session.id, "60001")
        assert too_long.code == 1 and "ferry: bad_request:" in too_long.stderr
        # Every pass copies 512 MiB at 256 MiB/s: the last one fits in 2000 ms, not in 300.
        changed = ferry(nats_server.url, "downtime", session.id, "3000")
        assert changed.code == 0, changed.stderr
        assert f"session {session.id} (migrating): max downtime 3000 ms" in changed.stdout
        final = await session_end(client, session.id)
        assert final.state == SessionState.COMPLETED, final.reason
        assert final.options.max_downtime_ms == 3000
        (step,) = [a for a in final.steering if a.kind == ActionKind.SET_DOWNTIME]
        assert (step.value, step.reason) == (3000, f"set by {LAB_ADMIN}: max downtime 300 -> 3000 ms")
        late = ferry(nats_server.url, "downtime", session.id, "500")
        assert late.code == 1 and "ferry: not_running:" in late.stderr
    (event,) = events.tagged("downtime_set")
    assert (event.session_id, event.max_downtime_ms, event.by) == (session.id, 3000, LAB_ADMIN)
    await events.close()
