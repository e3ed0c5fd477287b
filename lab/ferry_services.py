"""Ferry's own daemons in the lab: one ferry-agent per host and two ferry-coordinators
(a leader and a standby, as in production)."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ferry.lab import configs, processes
from ferry.lab.errors import LabError
from ferry.lab.layout import COORDINATORS, HostLayout, LabLayout
from ferry.lab.nats_security import NatsSecurity
from ferry.lab.processes import ProcessRef
from ferry.runtime.identity import Role
from ferry.runtime.metrics import metrics_url

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


def write_ferry_configs(layout: LabLayout, nats_urls: Sequence[str]) -> None:
    for host in layout.hosts:
        write_agent_config(layout, host, nats_urls)
    for name in COORDINATORS:
        write_coordinator_config(layout, name, nats_urls)


def write_agent_config(
    layout: LabLayout, host: HostLayout, nats_urls: Sequence[str], migration: dict[str, object] | None = None
) -> None:
    """The agent's config, and the (empty) probe folder it names."""
    host.probes_dir.mkdir(parents=True, exist_ok=True)
    identity = NatsSecurity(layout.nats_security_dir).config_lines(host.name, Role.HOST)
    host.agent_config.write_text(configs.agent_toml(host, nats_urls, identity, migration=migration))


def write_coordinator_config(layout: LabLayout, name: str, nats_urls: Sequence[str]) -> None:
    identity = NatsSecurity(layout.nats_security_dir).config_lines(name, Role.COORDINATOR)
    fence_dir = executable("fence_lab").parent
    layout.coordinator_config(name).write_text(configs.coordinator_toml(layout, name, nats_urls, identity, fence_dir))


def metrics_urls(layout: LabLayout) -> dict[str, str]:
    """Each Ferry daemon's /metrics, by daemon ("agent:hv1", "coordinator:c1")."""
    urls = {f"agent:{host.name}": metrics_url(configs.agent_metrics_address(host)) for host in layout.hosts}
    urls |= {f"coordinator:{name}": metrics_url(configs.coordinator_metrics_address(layout, name)) for name in COORDINATORS}
    return urls


def start_agent(host: HostLayout) -> ProcessRef:
    argv = [str(executable("ferry-agent")), "--config", str(host.agent_config)]
    return processes.spawn_detached(argv, host.agent_log)


def start_coordinator(layout: LabLayout, name: str) -> ProcessRef:
    argv = [str(executable("ferry-coordinator")), "--config", str(layout.coordinator_config(name))]
    return processes.spawn_detached(argv, layout.coordinator_log(name))


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
