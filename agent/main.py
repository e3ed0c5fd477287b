"""`ferry-agent --config agent.toml`"""

import asyncio
import sys

from ferry.agent.config import AgentConfig, problems
from ferry.agent.daemon import Agent
from ferry.agent.hypervisor import open_hypervisor
from ferry.runtime.daemon import run_daemon


async def _run(config: AgentConfig, stop: asyncio.Event) -> None:
    await Agent(config, open_hypervisor(config)).run(stop)


def main(argv: list[str] | None = None) -> int:
    return run_daemon(
        prog="ferry-agent",
        description="Ferry agent for one hypervisor host.",
        config_type=AgentConfig,
        run=_run,
        problems=problems,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
