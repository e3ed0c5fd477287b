"""`ferry-coordinator --config coordinator.toml`"""

import asyncio
import sys

from ferry.coordinator.config import CoordinatorConfig, problems
from ferry.coordinator.daemon import Coordinator
from ferry.runtime.daemon import run_daemon


async def _run(config: CoordinatorConfig, stop: asyncio.Event) -> None:
    await Coordinator(config).run(stop)


def main(argv: list[str] | None = None) -> int:
    return run_daemon(
        prog="ferry-coordinator",
        description="Ferry coordinator: host registry, placement, migration sessions.",
        config_type=CoordinatorConfig,
        run=_run,
        problems=problems,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
