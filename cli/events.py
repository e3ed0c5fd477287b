"""`ferry events`: what the coordinator decided and the hosts reported, read back
from the event stream, and followed as it grows. Also the `--since` parser
`ferry sessions` shares."""

import argparse
import asyncio
import datetime
import re
import sys
import time
from typing import Any

import msgspec
from rich.console import Console
from rich.text import Text

from ferry.cli.client import FerryClient
from ferry.cli.output import plain, print_json, wall_time
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.history import EventRecord, EventsRequest

# `--follow` asks again this often at the latest; sooner when an event is announced.
FOLLOW_POLL_SECONDS = 1.0
DEFAULT_SINCE = "1h"
DEFAULT_LIMIT = 1000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])\Z")
# Shown in the line's own columns, not among the details.
_COLUMNS = {"at", "host", "vm"}


def parse_since(text: str, now: float) -> float:
    """A wall time from `10m`, `2h`, `1d` (that long before `now`; also s and w) or an
    ISO time (`2026-12-01T10:00`, local unless it names its zone). Pure."""
    value = text.strip()
    if match := _DURATION.match(value):
        return max(0.0, now - float(match[1]) * _UNITS[match[2]])
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise FerryError(
            ErrorCode.BAD_REQUEST,
            f"--since {text!r}: give a duration such as 10m, 2h or 1d, or an ISO time such as 2026-12-01T10:00",
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the operator's local time, as `date` shows it
    try:
        return max(0.0, moment.timestamp())
    except (OverflowError, OSError, ValueError):
        raise FerryError(ErrorCode.BAD_REQUEST, f"--since {text!r} is not a time this machine can count to") from None


def _detail(value: Any) -> str:
    if isinstance(value, list):
        return f"[{len(value)}]" if value and not isinstance(value[0], str) else ",".join(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, "", 0)) + "}"
    return str(value)


def event_line(record: EventRecord) -> Text:
    """One event for people: time, kind, host/vm, then its other fields."""
    event = record.event
    fields = msgspec.structs.asdict(event)
    kind = type(event).__struct_config__.tag
    where = "/".join(str(fields[k]) for k in ("host", "vm") if fields.get(k))
    details = " ".join(
        f"{key}={_detail(value)}"
        for key, value in msgspec.to_builtins(fields).items()
        if key not in _COLUMNS and value not in (None, "", [], {})
    )
    return plain(f"{wall_time(event.at)}  {kind:<21} {where or '-':<24} {details}")


def request_of(args: argparse.Namespace, now: float) -> EventsRequest:
    return EventsRequest(since=parse_since(args.since, now), host=args.host, vm=args.vm, limit=min(args.limit, 10_000))


async def _cmd_events(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    if args.limit < 1:
        raise FerryError(ErrorCode.BAD_REQUEST, f"--limit {args.limit}: give 1 or more")
    request = request_of(args, time.time())
    if args.follow:
        return await _follow(client, request, args, console)
    found: list[EventRecord] = []
    while True:
        reply = await client.events(msgspec.structs.replace(request, limit=min(request.limit, args.limit - len(found))))
        found += reply.events
        if not reply.more or len(found) >= args.limit:
            break
        request = msgspec.structs.replace(request, after=reply.last_seq)
    if args.json:
        print_json(found)
    elif not found:
        console.print(plain(f"no events since {wall_time(request.since)}"))
    else:
        for record in found:
            console.print(event_line(record))
        if reply.more:
            console.print(plain(f"more events follow: the first {len(found)} are shown (--limit)"))
    return 0


async def _follow(client: FerryClient, request: EventsRequest, args: argparse.Namespace, console: Console) -> int:
    """Print what is stored, then each new event, until interrupted. Gap-free: every
    read continues from the last stream sequence read; an announced event only
    makes the next read come sooner."""
    async with client.event_doorbell() as rung:
        while True:
            rung.clear()
            reply = await client.events(request)
            for record in reply.events:
                if args.json:
                    sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
                else:
                    console.print(event_line(record))
            sys.stdout.flush()
            request = msgspec.structs.replace(request, after=reply.last_seq)
            if reply.more:
                continue
            try:
                await asyncio.wait_for(rung.wait(), timeout=FOLLOW_POLL_SECONDS)
            except TimeoutError:
                pass


def add_commands(sub: argparse._SubParsersAction) -> None:
    events = sub.add_parser(
        "events", help="what the coordinator decided and the hosts reported, oldest first",
        description="Events kept in the event stream (7 days by default: coordinator.toml [history]), in the order "
        "they were stored. Times are local.",
    )
    events.add_argument("--follow", "-f", action="store_true", help="then print new events as they come, until Ctrl-C")
    events.add_argument("--host", help="only events about this host")
    events.add_argument("--vm", help="only events naming this VM")
    events.add_argument(
        "--since", default=DEFAULT_SINCE, metavar="T",
        help=f"from this long ago (10m, 2h, 1d) or this time (ISO, e.g. 2026-12-01T10:00); default {DEFAULT_SINCE}",
    )
    events.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, metavar="N", help=f"at most N events (default {DEFAULT_LIMIT}; not with --follow)"
    )
    events.add_argument(
        "--json", action="store_true",
        help="one JSON array of {seq, subject, event}; with --follow, one such JSON object per line (JSON lines)",
    )
    events.set_defaults(run=_cmd_events)
