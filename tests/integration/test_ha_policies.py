"""`ferry ha`: each VM's restart priority and the cluster default, kept in KV
(they outlive the coordinator), written by operators only. Real CLI, real
coordinator processes and a real nats-server; simulated hypervisors."""

import subprocess

import msgspec
import pytest

from ferry.lab.nats_security import LAB_ADMIN
from ferry.proto.ha import HaPriority, HaReply
from ferry.runtime.identity import Role
from tests.support.cluster import CoordinatorEvents, connect_client, wait_hosts_up
from tests.support.ferry_cli import CliResult, ferry
from tests.support.processes import coordinator_toml, script, simulated_agent_toml
from tests.support.secured import cli_args
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def ferry_as_viewer(url, *args: str) -> CliResult:
    proc = subprocess.run(
        [script("ferry"), *cli_args(url, "bob", Role.VIEWER), *args], capture_output=True, text=True, timeout=60
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def shown(url, *vms: str) -> HaReply:
    out = ferry(url, "ha", "show", *vms, "--json")
    assert out.code == 0, out.stderr
    return msgspec.json.decode(out.stdout, type=HaReply)


async def test_ha_priorities_are_kept_per_vm_with_a_cluster_default_and_survive_a_coordinator_restart(
    daemons, nats_server, tmp_path
):
    url = nats_server.url
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(url))
    daemons.start("hv1", "ferry-agent", simulated_agent_toml("hv1", url, tmp_path, vms=[("db 1", 1, 256), ("web", 1, 256)]))
    events = await CoordinatorEvents().start(url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["hv1"])
        before = shown(url, "web")
        assert before.policies[0].priority == HaPriority.OFF and before.policies[0].from_default, "built in: off"

        # Any VM name is a key (spaces here), and a second identical write changes nothing.
        set_ = ferry(url, "ha", "set", "db 1", "--priority", "high")
        assert set_.code == 0, set_.stderr
        assert set_.stdout.startswith(f"db 1: high, set by {LAB_ADMIN} at "), set_.stdout
        again = ferry(url, "ha", "set", "db 1", "--priority", "high")
        assert again.stdout.rstrip().endswith("(unchanged)"), again.stdout
        default = ferry(url, "ha", "default", "low")
        assert default.code == 0 and default.stdout.startswith("cluster default: low, set by "), default

        unknown = ferry(url, "ha", "set", "nosuchvm", "--priority", "high")
        assert unknown.code == 1
        assert unknown.stderr.strip() == (
            "ferry: unknown_vm: no host reports a VM named nosuchvm; set its HA policy once it runs"
        )
        bad = ferry(url, "ha", "set", "web", "--priority", "urgent")
        assert bad.code == 2 and "invalid choice: 'urgent'" in bad.stderr

        viewer = ferry_as_viewer(url, "ha", "set", "web", "--priority", "high")
        assert viewer.code == 1 and "Traceback" not in viewer.stderr, viewer
        assert shown(url, "web").policies[0].from_default, "a viewer changed nothing"
        assert ferry_as_viewer(url, "ha", "show").code == 0, "a viewer may read"

        table = ferry(url, "ha", "show")
        assert table.code == 0 and "db 1" in table.stdout and "cluster default: low" in table.stdout

        async def announced():
            sets = events.tagged("ha_policy_set")
            return sets if len(sets) == 2 else None

        first, second = await eventually(announced, timeout=10, what="two ha_policy_set events")
        assert (first.vm, first.priority, first.by) == ("db 1", "high", LAB_ADMIN)
        assert (second.vm, second.priority) == ("", "low")

    daemons.kill("coordinator")
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(url))
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["hv1"])
        after = shown(url, "db 1", "web")
        assert [(p.vm, p.priority, p.from_default) for p in after.policies] == [
            ("db 1", HaPriority.HIGH, False), ("web", HaPriority.LOW, True),
        ]
        assert after.default.priority == HaPriority.LOW
        everything = shown(url)
        assert [p.vm for p in everything.policies] == ["db 1"]
