"""Many simulated agents in one process and one asyncio loop, for scale tests.

    python -m tests.support.fleet --config-dir DIR [--log-level warning]

runs an `Agent` for every `DIR/*.toml` until SIGTERM or SIGINT, then stops them
all through one shared stop event. Fifty `ferry-agent` interpreters are too
heavy for a 2-core CI machine; one loop carries fifty agents easily.
"""

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import structlog

from ferry.agent.config import AgentConfig
from ferry.agent.daemon import Agent
from ferry.agent.hypervisor import open_hypervisor
from ferry.runtime import logs
from ferry.runtime.config import ConfigError, load_toml
from ferry.runtime.identity import Role
from tests.support.processes import simulated_agent_toml
from tests.support.secured import ensure_identities


def write_fleet(
    dir: Path | str,
    nats_url: str,
    hosts: int,
    vms_per_host: int,
    *,
    cpus: int = 16,
    memory_mib: int = 65536,
    vm_memory_mib: int = 1024,
    speed_mib_per_s: int = 4096,
    heartbeat_interval: float = 1.0,
    health_interval: float = 2.0,
    name_format: str = "sim{:02d}",
) -> list[str]:
    """One simulated agent config per host in `dir` (hosts numbered from 1, VMs
    named `<host>-vm<n>` with 1 vCPU each); returns the host names."""
    dir = Path(dir)
    images = dir / "images"  # the agents' health probe wants an existing folder
    images.mkdir(parents=True, exist_ok=True)
    names = [name_format.format(i) for i in range(1, hosts + 1)]
    # Every identity at once: one reload of the servers, not one per host.
    ensure_identities(nats_url, [(host, Role.HOST) for host in names])
    for host in names:
        vms = [(f"{host}-vm{n}", 1, vm_memory_mib) for n in range(1, vms_per_host + 1)]
        toml = simulated_agent_toml(
            host,
            nats_url,
            images,
            interval=heartbeat_interval,
            cpus=cpus,
            memory_mib=memory_mib,
            vms=vms,
            health_interval=health_interval,
            migration_mib_per_s=speed_mib_per_s,
            state_dir=dir / "state" / host,
        )
        (dir / f"{host}.toml").write_text(toml)
    return names


def build_agents(config_dir: Path, log) -> dict[str, Agent]:
    """An Agent per loadable config, by host; a bad config costs only its own agent."""
    agents: dict[str, Agent] = {}
    for path in sorted(config_dir.glob("*.toml")):
        try:
            config = load_toml(path, AgentConfig)  # the loader ferry-agent uses
        except ConfigError as exc:
            log.error("agent_config_invalid", error=str(exc))
            continue
        if config.host in agents:
            # Two agents answering for one host would split its requests between them.
            log.error("agent_host_duplicate", host=config.host, config=str(path))
            continue
        try:
            agents[config.host] = Agent(config, open_hypervisor(config))
        except Exception:
            log.exception("agent_build_failed", host=config.host, config=str(path))
    return agents


async def _run_one(host: str, agent: Agent, stop: asyncio.Event, log) -> bool:
    try:
        await agent.run(stop)
        return True
    except Exception:
        # One failed agent must not take the other hosts down with it.
        log.exception("agent_failed", host=host)
        return False


async def run_fleet(config_dir: Path, log) -> int:
    """Run every agent until a signal; the number that ran to a clean stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Built inside the loop: agents create asyncio objects of their own.
    agents = build_agents(config_dir, log)
    if not agents:
        return 0
    log.info("fleet_running", agents=len(agents))
    async with asyncio.TaskGroup() as tg:
        runs = [tg.create_task(_run_one(host, agent, stop, log)) for host, agent in agents.items()]
    return sum(run.result() for run in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet", description="Many simulated Ferry agents in one process.")
    parser.add_argument("--config-dir", required=True, type=Path, help="folder of agent TOML files")
    # One log set-up for every agent (each config's log_level is not read):
    # fifty agents at info would flood the log with their start and stop lines.
    parser.add_argument("--log-level", default="warning", help="debug, info, warning or error")
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    log = structlog.get_logger().bind(fleet=str(args.config_dir))
    if asyncio.run(run_fleet(args.config_dir, log)) == 0:
        log.error("fleet_failed", reason="no agent could run")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
