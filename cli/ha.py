"""`ferry ha`: which VMs are restarted on another host when theirs dies, and in what order.

    ferry ha set VM --priority high|medium|low|off
    ferry ha default high|medium|low|off      # every VM without a policy of its own
    ferry ha show [VM ...] [--json]
    ferry ha restarts [--host HOST] [--json]  # restart sessions of dead hosts' VMs
"""

import argparse

from rich.console import Console
from rich.table import Table

from ferry.cli.client import FerryClient
from ferry.cli.output import plain, print_json, wall_time
from ferry.proto.ha import HaPolicy, HaPriority, HaReply, Restart, RestartState

PRIORITIES = [str(p) for p in HaPriority]


def policy_line(policy: HaPolicy) -> str:
    what = f"{policy.vm}: {policy.priority}" if policy.vm else f"cluster default: {policy.priority}"
    if policy.from_default:
        return f"{what} (the cluster default)"
    if not policy.at:
        return what + " (built in: nothing restarts that nobody marked)"
    return what + (f", set by {policy.by}" if policy.by else "") + f" at {wall_time(policy.at)}"


def _print(reply: HaReply, console: Console, args: argparse.Namespace, *, table: bool = False, copies: bool = False) -> None:
    if args.json:
        print_json(reply)
        return
    kept = {d.vm: d for d in reply.definitions}
    if not table:
        for policy in reply.policies or [reply.default]:
            line = policy_line(policy) + ("" if reply.changed else " (unchanged)")
            if copies and policy.vm:
                copy = kept.get(policy.vm)
                line += (f"; definition kept from {copy.host} at {wall_time(copy.at)}" if copy
                         else "; no copy of its definition is kept yet (it could not be restarted)")
            console.print(plain(line))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("VM", "PRIORITY", "SET BY", "AT"):
        table.add_column(column)
    for policy in reply.policies:
        table.add_row(plain(policy.vm), str(policy.priority), plain(policy.by or "-"), wall_time(policy.at) if policy.at else "-")
    console.print(table)
    console.print(plain(policy_line(reply.default)))


async def _cmd_set(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    _print(await client.ha_set(args.vm, HaPriority(args.priority)), console, args)
    return 0


async def _cmd_default(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    _print(await client.ha_default(HaPriority(args.priority)), console, args)
    return 0


async def _cmd_show(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    _print(await client.ha(args.vms), console, args, table=not args.vms, copies=True)
    return 0


def restart_line(r: Restart) -> str:
    where = f"on {r.dest}" if r.dest else "not placed yet"
    line = f"{r.vm} ({r.priority}) from {r.host}: {r.state} {where}"
    if r.state == RestartState.RUNNING and r.seconds:
        line += f", {r.seconds:.1f} s after {r.host} was last heard"
    if r.code:
        line += f" [{r.code}]"
    said = r.waiting or r.reason
    return line + (f": {said}" if said else "")


async def _cmd_restarts(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    reply = await client.restarts(args.host, args.limit)
    if args.json:
        print_json(reply)
    elif not reply.restarts:
        console.print("no restart sessions" + (f" for {args.host}" if args.host else ""))
    else:
        for restart in reply.restarts:
            console.print(plain(f"{restart.id}  {wall_time(restart.created_at)}  {restart_line(restart)}"))
    return 0


async def _cmd_confirm_dead(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    reply = await client.confirm_dead(args.host, args.reason)
    if args.json:
        print_json(reply)
    else:
        console.print(plain(f"{reply.record.reason}; recorded at {wall_time(reply.record.at)}"))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    host = sub.add_parser("host", help="a host's power: say a lost host is off (for HA restarts)")
    host_commands = host.add_subparsers(dest="host_command", required=True, metavar="COMMAND")
    confirm = host_commands.add_parser(
        "confirm-dead",
        help="a lost host is powered off: checked by hand (its fence failed or it has none); its HA VMs may start "
        "elsewhere. Saying so of a host that still runs them would run them twice",
    )
    confirm.add_argument("host")
    confirm.add_argument("--reason", default="", help="recorded with who and when")
    confirm.add_argument("--json", action="store_true")
    confirm.set_defaults(run=_cmd_confirm_dead)

    ha = sub.add_parser("ha", help="HA: which VMs restart on another host when theirs dies (after it is fenced)")
    commands = ha.add_subparsers(dest="ha_command", required=True, metavar="COMMAND")
    set_ = commands.add_parser("set", help="a VM's restart priority: high first, off never")
    set_.add_argument("vm")
    set_.add_argument("--priority", required=True, choices=PRIORITIES)
    set_.add_argument("--json", action="store_true")
    set_.set_defaults(run=_cmd_set)
    default = commands.add_parser("default", help="the priority of every VM without one of its own (built in: off)")
    default.add_argument("priority", choices=PRIORITIES)
    default.add_argument("--json", action="store_true")
    default.set_defaults(run=_cmd_default)
    show = commands.add_parser("show", help="the policies set (or those of the VMs named) and the cluster default")
    show.add_argument("vms", nargs="*", metavar="VM")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=_cmd_show)
    restarts = commands.add_parser("restarts", help="restart sessions: dead hosts' HA VMs started elsewhere, newest first")
    restarts.add_argument("--host", help="only the VMs of this dead host")
    restarts.add_argument("--limit", type=int, default=100, help="at most this many (1-1000)")
    restarts.add_argument("--json", action="store_true")
    restarts.set_defaults(run=_cmd_restarts)
