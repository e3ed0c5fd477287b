"""A lost host whose peers cannot reach its libvirtd is fenced through its device;
a failed fence restarts nothing and is said loudly; an operator may confirm a host
dead by hand. Real coordinator and nats-server, real fence-agent programs (small
scripts following the fence-agents convention); simulated hypervisors. The
same on real libvirt with fence_lab: tests/lab/test_power.py."""

import stat
import subprocess
from pathlib import Path

import msgspec
import pytest

from ferry.lab.nats_security import LAB_ADMIN
from ferry.proto.ha import FenceReply, FenceState
from ferry.runtime.identity import Role
from tests.support.cluster import CoordinatorEvents, connect_client, wait_hosts_up
from tests.support.ferry_cli import CliResult, ferry
from tests.support.processes import coordinator_toml, script, simulated_agent_toml
from tests.support.secured import cli_args
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

AGENT = """#!/bin/sh
opts=$(cat)
echo "$opts" >> {dir}/{name}.seen
case "$(echo "$opts" | sed -n 's/^action=//p')" in
  off) {off} ;;
  status) [ -f {dir}/{name}.off ] && exit 2; exit 0 ;;
  *) exit 1 ;;
esac
"""


def fence_agents(folder: Path) -> Path:
    folder.mkdir()
    for name, off in (("fence_ok", "touch {dir}/fence_ok.off"), ("fence_broken", 'echo "Failed: login refused" >&2; exit 1')):
        program = folder / name
        program.write_text(AGENT.format(dir=folder, name=name, off=off.format(dir=folder)))
        program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return folder


def fencing_toml(sbin: Path) -> str:
    """[fencing] for a coordinator: dead1's device works, dead2's fails."""
    return (
        f'\n[fencing]\nagent_dirs = ["{sbin}"]\n'
        '[fencing.devices."dead1"]\nagent = "fence_ok"\noptions = { plug = "dead1", password = "s3cret" }\n'
        'run_timeout = 5\npower_timeout = 5\nstatus_every = 0.2\n'
        '[fencing.devices."dead2"]\nagent = "fence_broken"\noptions = { plug = "dead2" }\nrun_timeout = 5\n'
    )


def ferry_as_viewer(url, *args: str) -> CliResult:
    proc = subprocess.run([script("ferry"), *cli_args(url, "bob", Role.VIEWER), *args], capture_output=True, text=True,
                          timeout=60)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


async def test_an_unreachable_host_is_fenced_a_failed_fence_is_loud_and_an_operator_may_confirm(daemons, nats_server, tmp_path):
    url = nats_server.url
    sbin = fence_agents(tmp_path / "sbin")
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(url, heartbeat_timeout=3) + fencing_toml(sbin))
    for host in ("dead1", "dead2", "p1", "p2"):
        daemons.start(host, "ferry-agent", simulated_agent_toml(host, url, tmp_path, vms=[(f"{host}-vm", 1, 256)]))
    events = await CoordinatorEvents().start(url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["dead1", "dead2", "p1", "p2"])
        up = ferry(url, "host", "confirm-dead", "p1")
        assert up.code == 1 and up.stderr.strip() == (
            "ferry: conflict: p1 is up: its agent reports, so it is not dead; only a lost host can be confirmed dead"
        )
        daemons.kill("dead1")
        daemons.kill("dead2")

        async def told():
            fenced = {e.host: e for e in events.tagged("host_fenced")}
            failed = {e.host: e for e in events.tagged("host_not_fenced")}
            return (fenced, failed) if "dead1" in fenced and "dead2" in failed else None

        fenced, failed = await eventually(told, timeout=45, what="dead1 fenced and dead2 not")
        probed = {e.host: e for e in events.tagged("host_probed")}
        assert {h: (e.verdict, e.peers) for h, e in probed.items()} == {
            "dead1": ("unreachable", ["p1", "p2"]), "dead2": ("unreachable", ["p1", "p2"]),
        }
        assert fenced["dead1"].by == "fence_ok" and fenced["dead1"].reason == "fence_ok confirms dead1 is off"
        assert (sbin / "fence_ok.seen").read_text().split("\n")[:3] == ["action=off", "password=s3cret", "plug=dead1"]
        assert failed["dead2"].reason == (
            "dead2 is not fenced: fence_broken action=off failed (exit 1: Failed: login refused); none of its VMs is "
            "started elsewhere (ferry host confirm-dead dead2 after checking by hand)"
        )
        order = events.tags()
        assert order.index("host_lost") < order.index("host_probed") < order.index("host_fenced")
        assert "host_not_fenced" in daemons.log("coordinator")

        viewer = ferry_as_viewer(url, "host", "confirm-dead", "dead2")
        assert viewer.code == 1 and "Traceback" not in viewer.stderr
        confirmed = ferry(url, "host", "confirm-dead", "dead2", "--reason", "pulled the plug myself")
        assert confirmed.code == 0, confirmed.stderr
        assert confirmed.stdout.startswith(f"{LAB_ADMIN} confirmed dead2 is off: pulled the plug myself; recorded at ")

        async def confirmed_event():
            return next((e for e in events.tagged("host_fenced") if e.host == "dead2"), None)

        event = await eventually(confirmed_event, timeout=10, what="dead2 confirmed dead")
        assert event.by == LAB_ADMIN
        as_json = ferry(url, "host", "confirm-dead", "dead2", "--json")
        assert as_json.code == 0, as_json.stderr
        record = msgspec.json.decode(as_json.stdout, type=FenceReply).record
        assert (record.host, record.state, record.by) == ("dead2", FenceState.CONFIRMED_DEAD, LAB_ADMIN)

        # A fenced host that comes back stays out of placement until an operator lets it back.
        daemons.start("dead1", "ferry-agent", simulated_agent_toml("dead1", url, tmp_path, vms=[("dead1-vm", 1, 256)]))

        async def back():
            hosts = {h.host: h for h in (await client.hosts()).hosts}
            return hosts["dead1"] if hosts["dead1"].state == "up" else None

        dead1 = await eventually(back, timeout=20, what="dead1 reporting again")
        assert dead1.draining and dead1.drain_reason.startswith("fenced: fence_ok confirms dead1 is off; ")
        refused = ferry(url, "migrate", "p1-vm", "--to", "dead1")
        assert refused.code == 1 and "the destination dead1 is draining (fenced: " in refused.stderr, refused
        undrained = ferry(url, "undrain", "dead1")
        assert undrained.code == 0, undrained.stderr
        assert not next(h for h in (await client.hosts()).hosts if h.host == "dead1").draining
        again = ferry(url, "undrain", "dead1")
        assert again.code == 1 and again.stderr.strip() == "ferry: not_found: dead1 is not draining"
