"""One entry-point shape for every daemon: parse `--config`, set up logs, run until a signal."""

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from ferry.runtime import logs
from ferry.runtime.config import ConfigError, load_toml

C = TypeVar("C")


def run_daemon(
    *,
    prog: str,
    description: str,
    config_type: type[C],
    run: Callable[[C, asyncio.Event], Awaitable[None]],
    argv: list[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="path to the TOML config file")
    parser.add_argument("--log-level", default=None, help="debug, info, warning or error")
    args = parser.parse_args(argv)
    try:
        config: Any = load_toml(args.config, config_type)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    logs.configure(args.log_level or getattr(config, "log_level", "info"))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(config, stop)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except Exception:
        structlog.get_logger().exception("daemon_crashed", prog=prog)
        return 1
    return 0
