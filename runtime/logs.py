"""structlog set-up: JSON lines when not on a terminal, readable colours when on one;
on the journal, each line starts with its syslog priority."""

import logging
import os
import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TextIO

import structlog

# syslog priorities (sd-daemon(3)) of structlog's level names. journald reads a
# leading `<N>` on a service's stdout/stderr lines as the priority (SyslogLevelPrefix=,
# on by default), so `journalctl -p err` finds the errors.
PRIORITIES: Mapping[str, int] = MappingProxyType({
    "debug": 7,
    "info": 6,
    "notice": 5,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
})
DEFAULT_PRIORITY = 6


def priority_prefix(level: str) -> str:
    return f"<{PRIORITIES.get(level.lower(), DEFAULT_PRIORITY)}>"


def on_journal(journal_stream: str | None, stream_id: tuple[int, int] | None) -> bool:
    """Whether a stream is the one systemd connected to the journal: `$JOURNAL_STREAM`
    is "DEVICE:INODE" of that stream (systemd.exec(5)); comparing it with the stream's
    own (device, inode) keeps a child whose stderr was redirected from prefixing."""
    if not journal_stream or stream_id is None:
        return False
    device, _, inode = journal_stream.partition(":")
    try:
        return (int(device), int(inode)) == stream_id
    except ValueError:
        return False


def stream_id(stream: TextIO) -> tuple[int, int] | None:
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_dev, st.st_ino


class WithPriority:
    """A renderer whose lines start with their journald priority, `<3>` for errors."""

    def __init__(self, renderer: Callable[..., Any]) -> None:
        self._renderer = renderer

    def __call__(self, logger: Any, method_name: str, event_dict: dict[str, Any]) -> str:
        level = str(event_dict.get("level", method_name))
        return priority_prefix(level) + self._renderer(logger, method_name, event_dict)


def quiet_asyncio() -> None:
    """asyncio warns "returning true from eof_received() has no effect when using
    ssl" whenever a TLS peer closes; it says nothing to an operator."""
    logging.getLogger("asyncio").setLevel(logging.ERROR)


def configure(level: str = "info", *, json: bool | None = None, journal: bool | None = None) -> None:
    quiet_asyncio()
    if json is None:
        json = not sys.stderr.isatty()
    if journal is None:
        journal = on_journal(os.environ.get("JOURNAL_STREAM"), stream_id(sys.stderr))
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    if journal:
        renderer = WithPriority(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
