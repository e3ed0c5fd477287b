"""`ferry drain`, `undrain`, `drains` and `limits`: emptying hosts and admission limits."""

import argparse
import asyncio

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ferry.cli.client import FerryClient
from ferry.cli.convergence import prediction_line
from ferry.cli.output import plain, plain_console, print_json, say_error
from ferry.coordinator.progress_estimate import DrainEstimate, DrainProgress, DrainVm
from ferry.proto.convergence import POLICIES
from ferry.proto.drain import Drain, DrainItem, DrainRequest, DrainState, ItemState
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.limits import LimitsRequest
from ferry.proto.session import Session

FOLLOW_POLL_SECONDS = 0.5
MIB = 1024 * 1024
GIB = 1024 * MIB
_ITEM_STYLE = {ItemState.MOVED: "green", ItemState.GAVE_UP: "red", ItemState.RETRYING: "yellow", ItemState.GONE: "dim"}


def drain_table(drain: Drain) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("VM", "MEMORY MiB", "VCPUS", "TO", "STATE", "ATTEMPTS", "SESSION", "NOTE"):
        table.add_column(column)
    for item in drain.items:
        style = _ITEM_STYLE.get(item.state)
        table.add_row(
            plain(item.vm),
            str(item.memory_mib),
            str(item.vcpus),
            plain(item.dest or "-"),
            Text(str(item.state), style=style or ""),
            str(item.attempts),
            plain(item.session_id or "-"),
            plain(item.reason),
        )
    return table


def drains_table(drains: list[Drain]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "STATE", "AUTOMATIC", "VMS", "REASON"):
        table.add_column(column)
    for d in drains:
        table.add_row(plain(d.host), str(d.state), "yes" if d.automatic else "no", counts_line(d), plain(d.reason))
    return table


def counts_line(drain: Drain) -> str:
    counts = drain.counts()
    parts = [f"{n} {state.replace('_', ' ')}" for state, n in sorted(counts.items())]
    return f"{len(drain.items)} VMs: {', '.join(parts) or 'none'}"


def item_line(item: DrainItem) -> Text:
    if item.state == ItemState.MOVED:
        return plain(f"  {item.vm}: moved to {item.dest} (session {item.session_id})")
    if item.state in (ItemState.QUEUED, ItemState.MOVING):
        return plain(f"  {item.vm}: {item.state} -> {item.dest or '?'} (session {item.session_id}, attempt {item.attempts})")
    return plain(f"  {item.vm}: {item.state}{': ' + item.reason if item.reason else ''}")


def drain_vm(item: DrainItem, session: Session | None) -> DrainVm:
    """A drain's VM as its progress estimate reads it, from its current or last session."""
    memory = item.memory_mib * MIB
    if session is None:
        return DrainVm(final=item.state.final, memory_bytes=memory)
    p = session.progress
    ended = session.state.terminal
    sent = session.outcome.data_transferred if ended and session.outcome is not None else (p.data_processed if p else 0)
    expected = int(p.data_processed * 100 / p.percent) if p is not None and p.percent and not ended else 0
    return DrainVm(
        final=item.state.final, memory_bytes=memory, sent=sent, expected=expected,
        rate_bps=p.bandwidth_bps if p is not None and not ended else 0, moved=item.state == ItemState.MOVED,
    )


def progress_line(estimate: DrainEstimate) -> str:
    eta = f"{estimate.eta_seconds:.0f}s" if estimate.eta_seconds is not None else "?"
    return (
        f"  {estimate.done}/{estimate.total} VMs done, {estimate.moved_bytes / GIB:.2f} GiB moved, "
        f"{estimate.percent:.0f}%" + ("" if estimate.done == estimate.total else f", ETA {eta}")
    )


async def follow_drain(client: FerryClient, host: str, console: Console) -> Drain:
    """Prints each VM's changes, and the whole drain's progress (VMs done, data moved,
    percent that never falls, ETA), until the drain is done; returns the final record."""
    seen: dict[str, tuple] = {}
    ended: dict[str, Session] = {}
    progress = DrainProgress()
    said = ""
    while True:
        try:
            (drain,) = await client.drains(host)
        except FerryError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                raise FerryError(ErrorCode.CONFLICT, f"{host} was undrained while the drain ran") from None
            raise
        for item in drain.items:
            key = (item.state, item.dest, item.session_id, item.attempts)
            if seen.get(item.vm) != key:
                seen[item.vm] = key
                console.print(item_line(item))
        line = progress_line(progress.update([drain_vm(item, await _session_of(client, item, ended)) for item in drain.items]))
        if line != said:
            said = line
            console.print(line, highlight=False)
        if drain.state == DrainState.DONE:
            return drain
        await asyncio.sleep(FOLLOW_POLL_SECONDS)


async def _session_of(client: FerryClient, item: DrainItem, ended: dict[str, Session]) -> Session | None:
    """The item's session (an ended one is asked for once)."""
    if item.session_id is None:
        return None
    if item.session_id in ended:
        return ended[item.session_id]
    try:
        session = await client.session(item.session_id)
    except FerryError:
        return None  # archived or not stored yet: the next round asks again
    if session.state.terminal:
        ended[item.session_id] = session
    return session


async def _cmd_drain(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    reply = await client.drain(
        DrainRequest(host=args.host, dry_run=args.dry_run, priority=args.priority, reason=args.reason, policy=args.policy)
    )
    drain = reply.drain
    if args.json and not args.wait:
        print_json(reply)
        return 0
    if reply.dry_run:
        console.print(plain(f"plan for draining {drain.host} (dry run: nothing is marked or moved)"))
        console.print(drain_table(drain))
        for item in drain.items:
            if item.prediction is not None:
                console.print(plain(f"  {item.vm}: {prediction_line(item.prediction)}"))
        unplaced = [i for i in drain.items if i.dest is None]
        console.print(f"{len(drain.items)} VMs: {len(drain.items) - len(unplaced)} placed, {len(unplaced)} cannot be placed now", highlight=False)
        return 0
    # With --json, stdout carries the JSON alone; what people read goes to stderr.
    people = plain_console(stderr=True) if args.json else console
    people.print(
        plain(f"{drain.host} is draining ({drain.reason}): no new VMs are placed there; {len(drain.items)} VMs to move")
    )
    if not args.wait:
        console.print(drain_table(drain))
        console.print(plain(f"follow with: ferry drains {drain.host}"))
        return 0
    final = await follow_drain(client, drain.host, people)
    if args.json:
        print_json(final)
    else:
        console.print(drain_table(final))
        console.print(
            plain(f"drain of {final.host} done: {counts_line(final)}; it stays draining until `ferry undrain {final.host}`")
        )
    gave_up = [i for i in final.items if i.state == ItemState.GAVE_UP]
    if gave_up:
        say_error("drain_incomplete", f"{len(gave_up)} VMs stay on {final.host}: {', '.join(i.vm for i in gave_up)}")
        return 1
    return 0


async def _cmd_undrain(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    drain = await client.undrain(args.host)
    if args.json:
        print_json(drain)
        return 0
    unfinished = [i.vm for i in drain.items if not i.state.final]
    console.print(plain(f"{drain.host} is no longer draining: new VMs may be placed there again"))
    if unfinished:
        console.print(plain(f"moves not finished: {', '.join(unfinished)} (queued ones are cancelled, running ones finish)"))
    return 0


async def _cmd_drains(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    drains = await client.drains(args.host)
    if args.json:
        print_json(drains)
        return 0
    if not drains:
        console.print("no host is draining")
        return 0
    if args.host:
        (drain,) = drains
        console.print(plain(f"{drain.host}: drain {drain.state} ({drain.reason}); {counts_line(drain)}"))
        console.print(drain_table(drain))
        return 0
    console.print(drains_table(drains))
    return 0


async def _cmd_limits(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    request = LimitsRequest(
        cluster=args.cluster,
        outbound_per_host=args.outbound,
        inbound_per_host=args.inbound,
        host_bandwidth_mib=args.host_bandwidth,
        reset=args.reset,
    )
    reply = await client.limits(request)
    if args.json:
        print_json(reply)
        return 0
    limits = reply.limits
    console.print(
        plain(
            f"migrations at once: {limits.cluster} in the cluster, {limits.outbound_per_host} out of and "
            f"{limits.inbound_per_host} into each host; bandwidth per host: "
            f"{str(limits.host_bandwidth_mib) + ' MiB/s' if limits.host_bandwidth_mib else 'unlimited'} "
            f"(from the {reply.source})"
        )
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    drain = sub.add_parser("drain", help="move every VM off a host and place no new ones there")
    drain.add_argument("host")
    drain.add_argument("--dry-run", action="store_true", help="print where each VM would go; change nothing")
    drain.add_argument("--wait", action="store_true", help="follow the drain until every VM is moved or given up")
    drain.add_argument("--priority", type=int, default=0, help="-100..100 for the drain's sessions")
    drain.add_argument("--reason", default="", help="recorded with the drain (default: operator)")
    drain.add_argument(
        "--policy", default="default", choices=list(POLICIES),
        help="convergence policy of the drain's migrations (see `ferry migrate --help`)",
    )
    drain.add_argument("--json", action="store_true")
    drain.set_defaults(run=_cmd_drain)

    undrain = sub.add_parser("undrain", help="allow VMs on a host again (never automatic)")
    undrain.add_argument("host")
    undrain.add_argument("--json", action="store_true", help="print the drain record as it was when undrained")
    undrain.set_defaults(run=_cmd_undrain)

    drains = sub.add_parser("drains", help="draining hosts, or one drain's per-VM report")
    drains.add_argument("host", nargs="?")
    drains.add_argument("--json", action="store_true")
    drains.set_defaults(run=_cmd_drains)

    limits = sub.add_parser("limits", help="show or change the admission limits")
    limits.add_argument("--cluster", type=int, metavar="N", help="migrations at once in the whole cluster")
    limits.add_argument("--outbound", type=int, metavar="N", help="migrations at once out of one host")
    limits.add_argument("--inbound", type=int, metavar="N", help="migrations at once into one host")
    limits.add_argument("--host-bandwidth", type=int, metavar="MiB/s", help="budget per host, shared by its migrations; 0: unlimited")
    limits.add_argument("--reset", action="store_true", help="back to the coordinator's config file")
    limits.add_argument("--json", action="store_true")
    limits.set_defaults(run=_cmd_limits)

