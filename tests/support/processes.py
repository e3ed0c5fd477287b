"""Ferry daemons as real processes, with their config written to a temp folder."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from ferry.runtime.identity import Role
from tests.support.secured import identity_lines

REPO_ROOT = Path(__file__).resolve().parents[2]


def script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class Daemons:
    """Starts ferry-agent / ferry-coordinator processes; stops every one it started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, program: str, config_toml: str) -> subprocess.Popen:
        config = self.workdir / f"{name}.toml"
        config.write_text(config_toml)
        return self._spawn(name, [script(program), "--config", str(config)])

    def start_fleet(self, name: str, config_dir: Path) -> subprocess.Popen:
        """Every agent config in `config_dir` in one process (tests/support/fleet.py)."""
        # cwd: `tests` is a package of the repository, not of the installed project.
        return self._spawn(name, [sys.executable, "-m", "tests.support.fleet", "--config-dir", str(config_dir)],
                           cwd=REPO_ROOT)

    def _spawn(self, name: str, argv: list[str], cwd: Path | None = None) -> subprocess.Popen:
        # The child keeps its own copy of the log file descriptor.
        with open(self.workdir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(timeout=10)

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


# A simulated VM: (name, vcpus, memory_mib), or with a 4th item, the CPU model it needs.
# (name, vcpus, memory MiB[, CPU model it needs ("" for none)[, MiB/s it dirties]])
SimulatedVmSpec = tuple[str, int, int] | tuple[str, int, int, str] | tuple[str, int, int, str, int]


def simulated_agent_toml(
    host: str,
    nats_url: str | list[str],
    images_dir: Path,
    *,
    interval: float = 0.5,
    cpus: int = 8,
    memory_mib: int = 16384,
    cpu_model: str | None = None,
    vms: Iterable[SimulatedVmSpec] = (),
    health_interval: float = 0.5,
    migration_mib_per_s: int = 256,
    unreachable: Iterable[str] = (),
    probe_dir: Path | str | None = None,
    probe_timeout: float | None = None,
    nats_extra: str = "",
    state_dir: Path | str | None = None,
    metrics_address: str = "",
    shut_off: Iterable[str] = (),
) -> str:
    """agent.toml for a simulated host (keys as in agent/config.py). `shut_off`: VMs
    defined but not running.

    `metrics_address` is off ("") unless a test asks: test daemons must not
    fight over the default port.

    `state_dir` (the agent's journal) defaults to a per-host folder in the test's
    folder, `<images_dir>/agent-state/<host>`: never the system's /var/lib/ferry.

    `cpu_model`, `probe_dir` and `probe_timeout` left at None keep the agent's
    own defaults. The default speed (256 MiB/s) is slow enough for a test to
    see a migration in flight. `peer_uri` is always `qemu+tls://<host>/system`
    (`simulated_peer_uri`): what a real host announces, so the source agent's
    peer rules apply as they do in production; the simulated backend uses it
    only to match `unreachable` hosts (migrations towards them fail part-way).
    """
    stopped = set(shut_off)
    simulated = [f"cpus = {cpus}", f"memory_mib = {memory_mib}"]
    if cpu_model is not None:
        simulated.append(f"cpu_model = {_quoted(cpu_model)}")
    simulated += [
        f"migration_mib_per_s = {migration_mib_per_s}",
        f"unreachable_peers = {_quoted([simulated_peer_uri(h) for h in unreachable])}",
        f"vms = [{', '.join(_vm_table(vm, running=vm[0] not in stopped) for vm in vms)}]",
    ]
    health = [f"interval = {health_interval}"]
    if probe_dir is not None:
        health.append(f"probe_dir = {_quoted(str(probe_dir))}")
    if probe_timeout is not None:
        health.append(f"probe_timeout = {probe_timeout}")
    return "\n".join([
        f"host = {_quoted(host)}",
        f"heartbeat_interval = {interval}",
        f"images_dir = {_quoted(str(images_dir))}",
        f"state_dir = {_quoted(str(state_dir if state_dir is not None else Path(images_dir) / 'agent-state' / host))}",
        f"metrics_address = {_quoted(metrics_address)}",
        "[nats]",
        f"servers = {_quoted(_urls(nats_url))}",
        "reconnect_wait = 0.2",
        identity_lines(nats_url, host, Role.HOST),
        nats_extra,
        "[hypervisor]",
        'backend = "simulated"',
        f"peer_uri = {_quoted(simulated_peer_uri(host))}",
        "[hypervisor.simulated]",
        *simulated,
        "[health]",
        *health,
        "",
    ])


def simulated_peer_uri(host: str) -> str:
    """The peer URI a simulated host announces (never dialled: the backend is simulated)."""
    return f"qemu+tls://{host}/system"


def _vm_table(vm: SimulatedVmSpec, *, running: bool = True) -> str:
    name, vcpus, memory_mib, *rest = vm
    keys = [f"name = {_quoted(name)}", f"vcpus = {vcpus}", f"memory_mib = {memory_mib}"]
    if not running:
        keys.append("running = false")
    if rest and rest[0]:
        keys.append(f"cpu_model = {_quoted(rest[0])}")
    if len(rest) > 1:
        keys.append(f"dirty_mib_per_s = {rest[1]}")
    return "{" + ", ".join(keys) + "}"


def _quoted(value: str | list[str]) -> str:
    """A TOML string or array of strings: JSON's quoting is valid TOML for both."""
    return json.dumps(value)


def _urls(nats_url: str | list[str]) -> list[str]:
    return [nats_url] if isinstance(nats_url, str) else list(nats_url)


def coordinator_toml(
    nats_url: str | list[str], *, heartbeat_timeout: float = 0.0, name: str = "", metrics_address: str = ""
) -> str:
    """`nats_url`: one server or a cluster's; `name`: the coordinator's (several run at once);
    `metrics_address`: off unless a test asks (test daemons must not fight over the default port)."""
    return f"""
heartbeat_timeout = {heartbeat_timeout}
name = {_quoted(name)}
metrics_address = {_quoted(metrics_address)}
[nats]
servers = {_quoted(_urls(nats_url))}
reconnect_wait = 0.2
{identity_lines(nats_url, name or "coordinator", Role.COORDINATOR)}"""
