"""One entry-point shape for every daemon: parse `--config`, check it, set up logs,
run until a signal. `--check-config` checks and exits, as `nats-server -t` does."""

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from ferry.runtime import logs
from ferry.runtime.config import read_config, with_credentials
from ferry.runtime.systemd import Notifier
from ferry.runtime.version import VERSION

C = TypeVar("C")

# A config that cannot work exits with this; the systemd units do not restart on
# it (RestartPreventExitStatus=2): restarting cannot fix a typo.
EXIT_BAD_CONFIG = 2


def run_daemon(
    *,
    prog: str,
    description: str,
    config_type: type[C],
    run: Callable[[C, asyncio.Event], Awaitable[None]],
    problems: Callable[[C], list[str]] = lambda _config: [],
    argv: list[str] | None = None,
) -> int:
    """`problems`: what is wrong with a config that decoded (files it names, ...)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="path to the TOML config file")
    parser.add_argument("--version", action="version", version=f"ferry {VERSION}")
    parser.add_argument("--log-level", default=None, help="debug, info, warning or error")
    parser.add_argument(
        "--check-config", action="store_true",
        help="check the config file (keys, values, the files it names) and exit: 0 when good, 2 with every problem",
    )
    args = parser.parse_args(argv)
    config, found = read_config(args.config, config_type)
    if config is not None:
        # Paths under ${CREDENTIALS_DIRECTORY}/ name systemd credentials (LoadCredential=).
        config = with_credentials(config, os.environ.get("CREDENTIALS_DIRECTORY"))
        found += problems(config)
    if found or config is None:
        count = f"{len(found)} problems" if len(found) > 1 else "a problem"
        print(f"{prog}: config file {args.config} has {count}:", file=sys.stderr)
        for problem in found:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.check_config:
        print(f"{prog}: config file {args.config} is good")
        return 0
    logs.configure(args.log_level or getattr(config, "log_level", "info"))
    # The daemon says READY=1 itself, once it can serve; until then `systemctl status` shows this.
    notifier = Notifier.from_environ()
    notifier.status("starting: connecting to NATS")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stop_requested() -> None:
            if not stop.is_set():
                # systemd then knows the stop is ours, not a crash, and waits for it.
                notifier.stopping()
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested)
        await run(config, stop)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except Exception:
        structlog.get_logger().exception("daemon_crashed", prog=prog)
        return 1
    return 0
