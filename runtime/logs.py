"""structlog set-up: JSON lines when not on a terminal, readable colours when on one."""

import logging
import sys

import structlog


def quiet_asyncio() -> None:
    """asyncio warns "returning true from eof_received() has no effect when using
    ssl" whenever a TLS peer closes; it says nothing to an operator."""
    logging.getLogger("asyncio").setLevel(logging.ERROR)


def configure(level: str = "info", *, json: bool | None = None) -> None:
    quiet_asyncio()
    if json is None:
        json = not sys.stderr.isatty()
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
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
