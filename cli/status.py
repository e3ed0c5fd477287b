"""`ferry status`: who leads, the coordinators taking part, the NATS server in
use and how many copies each KV bucket keeps."""

import argparse

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ferry.cli.client import FerryClient
from ferry.cli.output import plain, print_json, wall_time
from ferry.proto.leader import Role, StatusReply
from ferry.proto.names import printable


def leader_line(reply: StatusReply) -> Text:
    lease = reply.leader
    if lease is None:
        return Text("leader       none right now (a standby takes over when the lease lapses)", style="red")
    since = wall_time(lease.since)
    age = f", renewed {reply.lease_age:.1f}s ago" if reply.lease_age is not None else ""
    return plain(f"leader       {lease.holder} (term {lease.term}, since {since}{age})")


def coordinators_table(reply: StatusReply) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("COORDINATOR", "ROLE", "VERSION", "NATS", "SEEN"):
        table.add_column(column)
    for member in reply.coordinators:
        role = Text(str(member.role), style="bold" if member.role == Role.LEADER else "")
        table.add_row(plain(member.name), role, plain(member.version), plain(member.server or "-"), f"{member.seen_age:.1f}s ago")
    return table


def buckets_line(reply: StatusReply) -> Text:
    line = Text("kv buckets   ")
    for i, bucket in enumerate(reply.buckets):
        short = bucket.replicas > 1 and bucket.current < bucket.replicas
        line.append(("" if i == 0 else ", ") + f"{printable(bucket.name)} R{bucket.replicas}")
        if short:
            line.append(f" ({bucket.current} current)", style="yellow")
    return line


def print_status(reply: StatusReply, console: Console) -> None:
    console.print(leader_line(reply))
    console.print(plain(f"answered by  {reply.answered_by} ({reply.role})"))
    cluster = f"cluster {reply.nats_cluster} of {len(reply.nats_servers)} servers" if reply.nats_cluster else "a single server"
    console.print(plain(f"nats         {reply.nats_server}, {cluster}"))
    console.print(buckets_line(reply))
    draining = f"; draining: {', '.join(reply.draining)}" if reply.draining else ""
    console.print(plain(f"hosts        {reply.hosts_up} up, {reply.hosts_lost} lost{draining}"))
    limits = reply.limits
    console.print(
        f"limits       cluster {limits.cluster}, per host out {limits.outbound_per_host} / in {limits.inbound_per_host}",
        highlight=False,
    )
    console.print(coordinators_table(reply))


async def cmd_status(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    reply = await client.status()
    if args.json:
        print_json(reply)
    else:
        print_status(reply, console)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="who leads, the coordinators, NATS and the KV buckets")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=cmd_status)
