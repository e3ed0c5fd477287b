"""Built-in health probes. The judgements are pure; only `probe_host` does I/O.

Executable probes (`agent.probes`) reach `probe_host` as an injected runner, so
their checks join the built-in ones in one list and one worst state.
"""

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ferry.agent.config import HealthSettings
from ferry.agent.hypervisor import Hypervisor, HypervisorUnavailable, NodeFacts
from ferry.proto.host import HealthCheck, HealthState


@dataclass(frozen=True)
class DiskSpace:
    total_bytes: int
    free_bytes: int


def judge_share(
    name: str, what: str, free: float, total: float, warning_percent: float, critical_percent: float
) -> HealthCheck:
    if total <= 0:
        return HealthCheck(name, HealthState.CRITICAL, f"{what}: total size is zero")
    percent = 100.0 * free / total
    message = f"{what}: {percent:.1f}% free"
    if percent < critical_percent:
        return HealthCheck(name, HealthState.CRITICAL, f"{message} (< {critical_percent:g}%)")
    if percent < warning_percent:
        return HealthCheck(name, HealthState.WARNING, f"{message} (< {warning_percent:g}%)")
    return HealthCheck(name, HealthState.OK, message)


def judge_memory(facts: NodeFacts, settings: HealthSettings) -> HealthCheck:
    return judge_share(
        "memory",
        f"host memory {facts.memory_free_mib} of {facts.memory_total_mib} MiB",
        facts.memory_free_mib,
        facts.memory_total_mib,
        settings.memory_warning_percent,
        settings.memory_critical_percent,
    )


def judge_disk(path: str, space: DiskSpace | None, settings: HealthSettings) -> HealthCheck:
    if space is None:
        return HealthCheck("images_disk", HealthState.WARNING, f"images folder {path} does not exist")
    return judge_share(
        "images_disk",
        f"images folder {path}",
        space.free_bytes,
        space.total_bytes,
        settings.disk_warning_percent,
        settings.disk_critical_percent,
    )


def read_disk_space(path: str) -> DiskSpace | None:
    try:
        st = os.statvfs(path)
    except FileNotFoundError:
        return None
    return DiskSpace(total_bytes=st.f_blocks * st.f_frsize, free_bytes=st.f_bavail * st.f_frsize)


@dataclass(frozen=True)
class Probe:
    """One run of the probes; `facts` is None when the hypervisor is unreachable."""

    facts: NodeFacts | None
    checks: list[HealthCheck]

    @property
    def state(self) -> HealthState:
        return HealthState.worst([c.state for c in self.checks])


PluginRunner = Callable[[], Awaitable[list[HealthCheck]]]


async def probe_host(
    hypervisor: Hypervisor, images_dir: str, settings: HealthSettings, *, plugins: PluginRunner | None = None
) -> Probe:
    """Built-in checks, then the plugins' checks (run alongside, in name order)."""
    async with asyncio.TaskGroup() as tg:
        plugin_run = tg.create_task(plugins()) if plugins is not None else None
        facts, checks = await _builtin_checks(hypervisor, images_dir, settings)
    if plugin_run is not None:
        checks += plugin_run.result()
    return Probe(facts=facts, checks=checks)


async def _builtin_checks(
    hypervisor: Hypervisor, images_dir: str, settings: HealthSettings
) -> tuple[NodeFacts | None, list[HealthCheck]]:
    checks = []
    facts: NodeFacts | None = None
    try:
        facts = await hypervisor.node_facts()
        checks.append(HealthCheck("hypervisor", HealthState.OK, f"{hypervisor.backend} reachable"))
        checks.append(judge_memory(facts, settings))
    except HypervisorUnavailable as exc:
        checks.append(HealthCheck("hypervisor", HealthState.CRITICAL, str(exc)))
    space = await asyncio.to_thread(read_disk_space, images_dir)
    checks.append(judge_disk(images_dir, space, settings))
    return facts, checks
