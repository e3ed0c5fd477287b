"""The real `ferry` CLI against a live simulated cluster: every command with
--json, cancel by VM name, tables through a pipe, and the connection taken from
a config file or the environment."""

import asyncio
import json
import os
import shlex
import subprocess

import pytest

from ferry.cli.main import build_parser
from ferry.proto.api import MigrateRequest
from ferry.proto.session import MigrateOptions, SessionState
from tests.support.cluster import connect_client, wait_hosts_up
from tests.support.processes import coordinator_toml, script, simulated_agent_toml
from tests.support.secured import cli_args, settings_for
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.integration


def run_ferry(*args: str, env: dict[str, str] | None = None, home=None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """The CLI with stdout a pipe, as in `ferry ... | cat`. The environment keeps no
    FERRY_* variable and no user config file unless the test gives them."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_") and k != "XDG_CONFIG_HOME"}
    if home is not None:
        clean["HOME"] = str(home)
    return subprocess.run(
        [script("ferry"), *args], capture_output=True, text=True, timeout=timeout, env={**clean, **(env or {})}
    )


async def ferry_async(*args: str, **options) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(run_ferry, *args, **options)


def start_cluster(daemons, nats_server, tmp_path, **src_options) -> None:
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, **src_options))
    for name in ("dst", "spare"):
        daemons.start(name, "ferry-agent", simulated_agent_toml(name, nats_server.url, tmp_path))


async def migrating(client, vm: str):
    """A session moving `vm` slowly (16 MiB/s of 4 GiB), seen migrating."""
    session = await client.migrate(MigrateRequest(vm=vm, dest="dst", options=MigrateOptions(bandwidth_mib=16)))

    async def moving():
        s = await client.session(session.id)
        return s if s.state == SessionState.MIGRATING else None

    return await eventually(moving, timeout=15, what=f"{vm} migrating")


async def test_cancel_by_vm_name_cancels_its_running_session(daemons, nats_server, tmp_path):
    start_cluster(daemons, nats_server, tmp_path, vms=[("web-1", 1, 4096), ("idle", 1, 512)])
    reach = cli_args(nats_server.url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst", "spare"])
        session = await migrating(client, "web-1")

        cancelled = await ferry_async(*reach, "cancel", "web-1", "--wait", "--json")
        assert cancelled.returncode == 0, cancelled.stderr
        final = json.loads(cancelled.stdout)
        assert final["id"] == session.id and final["state"] == "cancelled" and final["vm"] == "web-1"
        assert f"session {session.id}:" in cancelled.stderr  # people's lines go to stderr with --json
        assert (await session_end(client, session.id)).state == SessionState.CANCELLED

        for vm in ("web-1", "idle", "no-such-vm"):
            none_running = await ferry_async(*reach, "cancel", vm)
            assert none_running.returncode == 1
            assert none_running.stderr == f"ferry: not_found: no session is moving a VM called {vm} now\n"
        # A word that may be a session id too.
        unknown = await ferry_async(*reach, "cancel", "nobody")
        assert unknown.stderr == (
            "ferry: not_found: no session has the id nobody, and no session is moving a VM called nobody now\n"
        )

        # A session id still works, and a finished one says so.
        by_id = await ferry_async(*reach, "cancel", session.id)
        assert by_id.returncode == 1 and by_id.stderr.startswith("ferry: conflict: session")


# How the every-command test runs each command with --json, in this order (`drain`
# before `drains` and `undrain`; `cancel` and `force-complete` end their sessions
# last). MOVING and FORCED stand for two running sessions' ids. None: the command
# prints no data (a shell script). A command missing here fails the test: add it.
JSON_RUNS: dict[str, list[str] | None] = {
    "hosts": ["hosts"],
    "status": ["status"],
    "limits": ["limits"],
    "events": ["events"],
    "migrate": ["migrate", "g2", "--dry-run"],
    "sessions": ["sessions"],
    "session": ["session", "MOVING"],
    "bandwidth": ["bandwidth", "MOVING", "8"],
    "downtime": ["downtime", "MOVING", "500"],
    "drain": ["drain", "spare"],
    "drains": ["drains"],
    "undrain": ["undrain", "spare"],
    "cordon": ["cordon", "spare"],
    "uncordon": ["uncordon", "spare"],
    "cancel": ["cancel", "MOVING"],
    "force-complete": ["force-complete", "FORCED"],
    "ha": ["ha", "show"],
    # Needs a lost host: its --json is run in tests/integration/test_fencing_simulated.py.
    "host": None,
    "completion": None,
}


def ferry_commands() -> list[str]:
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return list(sub.choices)


def parses_as_json(text: str) -> bool:
    """One JSON document, or JSON Lines (one document a line, for a stream)."""
    try:
        json.loads(text)
        return True
    except ValueError:
        pass
    try:
        return bool(text.strip()) and all(json.loads(line) is not None for line in text.splitlines() if line.strip())
    except ValueError:
        return False


async def test_every_command_prints_json_with_json(daemons, nats_server, tmp_path):
    commands = ferry_commands()
    missing = [c for c in commands if c not in JSON_RUNS]
    assert not missing, f"not covered: add how to run these with --json to JSON_RUNS: {missing}"
    start_cluster(daemons, nats_server, tmp_path, vms=[("g1", 1, 4096), ("g2", 1, 512), ("g3", 1, 4096)])
    reach = cli_args(nats_server.url)
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst", "spare"])
        ids = {"MOVING": (await migrating(client, "g1")).id, "FORCED": (await migrating(client, "g3")).id}
        ran = []
        for command, argv in JSON_RUNS.items():
            if command not in commands or argv is None:
                continue
            argv = [ids.get(word, word) for word in argv] + ["--json"]
            result = await ferry_async(*reach, *argv)
            assert result.returncode == 0, f"ferry {shlex.join(argv)}: {result.stderr}"
            assert parses_as_json(result.stdout), f"ferry {shlex.join(argv)} printed no JSON: {result.stdout!r}"
            ran.append(command)
        assert {"hosts", "cancel", "undrain", "bandwidth", "limits", "drain", "status"} <= set(ran)


async def test_hosts_through_a_pipe_print_one_line_per_host(daemons, nats_server, tmp_path):
    # A CPU model long enough that a row is wider than any terminal.
    cpu = "Intel(R) Xeon(R) Platinum 8480+ with a very long marketing name " * 5
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    names = ["hv1", "hv2", "hv3"]
    for name in names:
        daemons.start(name, "ferry-agent", simulated_agent_toml(name, nats_server.url, tmp_path, cpu_model=cpu.strip()))
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, names)
        drained = await ferry_async(*cli_args(nats_server.url), "drain", "hv2")
        assert drained.returncode == 0, drained.stderr
        command = shlex.join([script("ferry"), *cli_args(nats_server.url), "hosts"]) + " | cat"
        piped = await asyncio.to_thread(subprocess.run, ["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    assert len(lines) == 1 + len(names) + 1, piped.stdout
    assert lines[0].startswith("HOST") and lines[-1].startswith("leader: ")
    for name, line in zip(names, lines[1:-1]):
        assert line.startswith(name) and cpu.strip() in line
    assert "up (draining)" in lines[2] and len(lines[2]) > 300


def config_toml(url) -> str:
    settings = settings_for(url)
    return "\n".join([
        f"servers = {json.dumps(settings.servers)}",
        f"identity = {json.dumps(settings.identity)}",
        f"tls_ca = {json.dumps(settings.tls_ca)}",
        "timeout = 10",
        "",
    ])


async def test_the_connection_comes_from_a_config_file_or_the_environment(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    daemons.start("hv1", "ferry-agent", simulated_agent_toml("hv1", nats_server.url, tmp_path))
    home = tmp_path / "home"
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["hv1"])

    def works(result: subprocess.CompletedProcess) -> None:
        assert result.returncode == 0, result.stderr
        assert [line.split()[0] for line in result.stdout.splitlines()[1:-1]] == ["hv1"]

    # The user's file, found through $HOME, and through $XDG_CONFIG_HOME.
    user_file = home / ".config" / "ferry" / "ferry.toml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text(config_toml(nats_server.url))
    works(await ferry_async("hosts", home=home))
    xdg = tmp_path / "xdg"
    (xdg / "ferry").mkdir(parents=True)
    user_file.rename(xdg / "ferry" / "ferry.toml")
    works(await ferry_async("hosts", home=home, env={"XDG_CONFIG_HOME": str(xdg)}))
    named = xdg / "ferry" / "ferry.toml"
    works(await ferry_async("--config", str(named), "hosts", home=home))
    works(await ferry_async("hosts", home=home, env={"FERRY_CONFIG": str(named)}))

    # The environment alone.
    settings = settings_for(nats_server.url)
    environ = {"FERRY_NATS_URL": settings.servers[0], "FERRY_IDENTITY": settings.identity, "FERRY_NATS_TLS_CA": settings.tls_ca}
    works(await ferry_async("hosts", home=home, env=environ))

    # Later sources override earlier ones: the environment over the file, a flag over both.
    via = await ferry_async("hosts", home=home, env={"FERRY_CONFIG": str(named), "FERRY_VIA": "nosuch"})
    assert via.returncode == 1 and via.stderr.startswith("ferry: unavailable: no coordinator called nosuch is running")
    works(await ferry_async("--via", "", "hosts", home=home, env={"FERRY_CONFIG": str(named), "FERRY_VIA": "nosuch"}))
    wrong_server = await ferry_async("hosts", home=home, env={"FERRY_CONFIG": str(named), "FERRY_NATS_URL": "nats://127.0.0.1:1"})
    assert wrong_server.returncode == 1 and "ferry: unavailable: cannot reach NATS at nats://127.0.0.1:1" in wrong_server.stderr
    works(await ferry_async("--server", settings.servers[0], "hosts", home=home,
                            env={"FERRY_CONFIG": str(named), "FERRY_NATS_URL": "nats://127.0.0.1:1"}))

    # A bad file: exit 1, the file and the problem, no traceback.
    bad = tmp_path / "bad.toml"
    bad.write_text(config_toml(nats_server.url) + 'tls_cafile = "x"\n')
    refused = await ferry_async("--config", str(bad), "hosts", home=home)
    assert refused.returncode == 1
    assert refused.stderr == f"ferry: bad_request: {bad}: unknown key tls_cafile (did you mean tls_ca?)\n"
