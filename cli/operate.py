"""`ferry cordon`, `uncordon`, `force-complete` and `downtime`: an operator's hand on
hosts (no new VMs, nothing moved) and on a running migration (finish it now, or
allow it a longer pause)."""

import argparse

from rich.console import Console

from ferry.cli.client import FerryClient
from ferry.cli.output import plain, print_json, wall_time
from ferry.proto.api import Cordon
from ferry.proto.convergence import ActionKind
from ferry.proto.session import Session

_FORCED = (ActionKind.POSTCOPY, ActionKind.PAUSE)


def cordon_line(cordon: Cordon) -> str:
    why = f" ({cordon.reason})" if cordon.reason else ""
    who = f" by {cordon.by}" if cordon.by else ""
    return f"cordoned{who} at {wall_time(cordon.at)}{why}"


def forced_line(session: Session) -> str:
    """What force-complete did, from the last such action in the session's steering record."""
    action = next((a for a in reversed(session.steering) if a.kind in _FORCED), None)
    if action is None:
        return f"session {session.id} ({session.state}): asked to finish"
    if action.kind == ActionKind.POSTCOPY:
        what = f"switched to post-copy: {session.vm} runs on {session.dest} now, its remaining memory follows"
    else:
        what = f"the guest pauses for the last pass (max downtime {action.value} ms)"
    return f"session {session.id} ({session.state}): {what}; {action.reason}"


async def _cmd_cordon(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    reply = await client.cordon(args.host, args.reason)
    if args.json:
        print_json(reply)
        return 0
    cordon = reply.cordon
    if reply.changed:
        console.print(plain(f"{cordon.host} is cordoned: no new VMs are placed there; the VMs it runs stay"))
    else:
        console.print(plain(f"{cordon.host} was {cordon_line(cordon)}; nothing changed"))
    return 0


async def _cmd_uncordon(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    reply = await client.uncordon(args.host)
    if args.json:
        print_json(reply)
        return 0
    console.print(plain(f"{reply.cordon.host} is no longer cordoned: new VMs may be placed there again"))
    return 0


async def _cmd_force_complete(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    session = await client.force_complete(args.id)
    if args.json:
        print_json(session)
        return 0
    console.print(plain(forced_line(session)))
    return 0


async def _cmd_downtime(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    session = await client.downtime(args.id, args.ms)
    if args.json:
        print_json(session)
        return 0
    console.print(plain(f"session {session.id} ({session.state}): max downtime {args.ms} ms"))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    cordon = sub.add_parser("cordon", help="place no new VMs on a host; the VMs it runs stay (see `drain` to empty it)")
    cordon.add_argument("host")
    cordon.add_argument("--reason", default="", help="recorded with the cordon, with who and when")
    cordon.add_argument("--json", action="store_true")
    cordon.set_defaults(run=_cmd_cordon)

    uncordon = sub.add_parser("uncordon", help="allow new VMs on a cordoned host again")
    uncordon.add_argument("host")
    uncordon.add_argument("--json", action="store_true")
    uncordon.set_defaults(run=_cmd_uncordon)

    force = sub.add_parser(
        "force-complete",
        help="finish a running migration now: post-copy if the session allows it, else pause the guest for the last pass",
    )
    force.add_argument("id")
    force.add_argument("--json", action="store_true")
    force.set_defaults(run=_cmd_force_complete)

    downtime = sub.add_parser("downtime", help="set the max downtime of a running migration")
    downtime.add_argument("id")
    downtime.add_argument("ms", type=int, metavar="MS", help="the longest pause it may end with, 1..60000 ms")
    downtime.add_argument("--json", action="store_true")
    downtime.set_defaults(run=_cmd_downtime)
