"""Ferry's own daemons in the lab: one ferry-agent per host and a ferry-coordinator."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from ferry.lab import configs, processes
from ferry.lab.errors import LabError
from ferry.lab.layout import HostLayout, LabLayout
from ferry.lab.processes import ProcessRef

# A daemon still alive this long after start is taken as started; one with a
# broken config or import dies well within it.
SETTLE_SECONDS = 1.5


def executable(name: str) -> Path:
    """The console script next to this Python (the venv), else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found is None:
        raise LabError(f"{name} is not installed next to {sys.executable} nor on PATH; run `make venv`.")
    return Path(found)


def write_ferry_configs(layout: LabLayout, nats_url: str) -> None:
    for host in layout.hosts:
        write_agent_config(host, nats_url)
    layout.coordinator_config.write_text(configs.coordinator_toml(layout, nats_url))


def write_agent_config(host: HostLayout, nats_url: str, migration: dict[str, object] | None = None) -> None:
    """The agent's config, and the (empty) probe folder it names."""
    host.probes_dir.mkdir(parents=True, exist_ok=True)
    host.agent_config.write_text(configs.agent_toml(host, nats_url, migration))


def start_agent(host: HostLayout) -> ProcessRef:
    argv = [str(executable("ferry-agent")), "--config", str(host.agent_config)]
    return processes.spawn_detached(argv, host.agent_log)


def start_coordinator(layout: LabLayout) -> ProcessRef:
    argv = [str(executable("ferry-coordinator")), "--config", str(layout.coordinator_config)]
    return processes.spawn_detached(argv, layout.coordinator_log)


def settle(started: dict[str, tuple[ProcessRef, Path]]) -> dict[str, str]:
    """Wait a moment, then name every daemon that has died, with its last log line."""
    if not started:
        return {}
    time.sleep(SETTLE_SECONDS)
    return {
        role: f"{role} exited right after starting; see {log}: {processes.last_line(log, 2)}"
        for role, (ref, log) in started.items()
        if not processes.is_running(ref)
    }
