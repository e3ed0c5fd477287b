"""Ferry daemons as real processes, with their config written to a temp folder."""

import os
import signal
import subprocess
import sys
from pathlib import Path


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
        log = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [script(program), "--config", str(config)],
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


def simulated_agent_toml(host: str, nats_url: str, images_dir: Path, *, interval: float = 0.5,
                         cpus: int = 8, memory_mib: int = 16384, vms: list[tuple[str, int, int]] = ()) -> str:
    vm_lines = ", ".join(f'{{name = "{n}", vcpus = {c}, memory_mib = {m}}}' for n, c, m in vms)
    return f"""
host = "{host}"
heartbeat_interval = {interval}
images_dir = "{images_dir}"
[nats]
servers = ["{nats_url}"]
reconnect_wait = 0.2
[hypervisor]
backend = "simulated"
[hypervisor.simulated]
cpus = {cpus}
memory_mib = {memory_mib}
vms = [{vm_lines}]
[health]
interval = 0.5
"""


def coordinator_toml(nats_url: str, *, heartbeat_timeout: float = 0.0) -> str:
    return f"""
heartbeat_timeout = {heartbeat_timeout}
[nats]
servers = ["{nats_url}"]
reconnect_wait = 0.2
"""
