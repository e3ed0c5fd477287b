"""Output shared by the CLI's commands.

Text that comes from hosts, users or the coordinator (names, reasons, probe
messages) is printed through `plain`: as written, never as rich markup, emoji
codes or terminal control. A probe saying "md array [/dev/md0] degraded" is
shown so, and cannot break or restyle `ferry hosts` for everyone."""

import sys
import time
from typing import Any

import msgspec
from rich.console import Console
from rich.text import Text

from ferry.proto.names import printable


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value)).decode() + "\n")


def say_error(code: str, message: str) -> None:
    # Plain, unwrapped: scripts match on these lines. Control characters are
    # escaped: a message may carry a host's text to the operator's terminal.
    sys.stderr.write(f"ferry: {printable(code)}: {printable(message)}\n")


def plain(text: str, style: str = "") -> Text:
    """A line or a table cell holding untrusted text, as rich shows it exactly:
    a Text is never parsed for markup or emoji (whatever the console's settings),
    and control characters (escape sequences, bidi overrides) appear as escapes
    such as `\\x1b`."""
    return Text(printable(text), style=style)


def wall_time(at: float) -> str:
    """A wall-clock time for people; one no calendar can show (a record claiming
    the year 10**300) is written as the number it is."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    except (OverflowError, OSError, ValueError):
        return f"{at:g} (not a date)"


# Not a terminal: no width to fit. Wider than any row Ferry prints (names are at
# most 255 characters), so rich never wraps or crops a cell; tables and Text are
# not padded to the console's width, so nothing grows with it.
PIPE_WIDTH = 1 << 24


def plain_console(*, stderr: bool = False) -> Console:
    """A console that renders text as it is: names and reasons come from hosts and
    users, so "[red]" in a VM name is printed, never taken as markup. Colour is
    given with `style=` or Text objects. Lines are not wrapped: scripts and logs
    read them whole. (Renderers give such text as `plain(...)` all the same, so
    no output depends on these settings.)"""
    console = Console(stderr=stderr, soft_wrap=True, markup=False, highlight=False, emoji=False)
    if not console.is_terminal:
        # Tables to a pipe or a log: one row per line, whole, however long.
        console.width = PIPE_WIDTH
    return console
