"""Output shared by the CLI's commands."""

import sys
from typing import Any

import msgspec
from rich.console import Console


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value)).decode() + "\n")


def say_error(code: str, message: str) -> None:
    # Plain, unwrapped: scripts match on these lines.
    sys.stderr.write(f"ferry: {code}: {message}\n")


PIPE_WIDTH = 250


def plain_console(*, stderr: bool = False) -> Console:
    """A console that renders text as it is: names and reasons come from hosts and
    users, so "[red]" in a VM name is printed, never taken as markup. Colour is
    given with `style=` or Text objects. Lines are not wrapped: scripts and logs
    read them whole."""
    console = Console(stderr=stderr, soft_wrap=True, markup=False, highlight=False, emoji=False)
    if not console.is_terminal:
        # Tables to a pipe or a log: one row per line, not wrapped at 80 columns.
        console.width = PIPE_WIDTH
    return console
