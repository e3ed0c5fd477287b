"""`ferry`: the operator's command line. It talks only to the coordinator."""

import argparse
import asyncio
import os
import sys

import msgspec
from rich.console import Console
from rich.table import Table

from coordinator.client import FerryClient
from proto.api import HostState, HostsReply, HostView
from proto.errors import FerryError
from proto.host import HealthState
from runtime.config import NatsSettings

_HEALTH_STYLE = {HealthState.OK: "green", HealthState.WARNING: "yellow", HealthState.CRITICAL: "red"}


def hosts_table(reply: HostsReply) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "STATE", "HEALTH", "VCPU", "MEMORY MiB", "VMS", "LIBVIRT", "QEMU", "CPU", "SEEN"):
        table.add_column(column)
    for h in reply.hosts:
        table.add_row(*_host_row(h))
    return table


def _host_row(h: HostView) -> list[str]:
    cap = h.capacity
    state = f"[red]{h.state}[/]" if h.state == HostState.LOST else str(h.state)
    health = f"[{_HEALTH_STYLE[h.health]}]{h.health}[/]"
    return [
        h.host,
        state,
        health,
        f"{cap.vcpus_used}/{cap.cpus}",
        f"{cap.memory_used_mib}/{cap.memory_total_mib}",
        str(sum(1 for vm in h.vms if vm.state in ("running", "paused"))),
        h.versions.libvirt or "-",
        h.versions.qemu or "-",
        h.cpu_model or "-",
        f"{h.last_seen_age:.1f}s ago",
    ]


async def _cmd_hosts(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    reply = await client.hosts()
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(reply)).decode() + "\n")
        return 0
    if not reply.hosts:
        console.print("no hosts have reported yet")
        return 0
    console.print(hosts_table(reply))
    for h in reply.hosts:
        for check in h.checks:
            if check.state != HealthState.OK:
                console.print(f"[{_HEALTH_STYLE[check.state]}]{h.host}: {check.name} {check.state}: {check.message}[/]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry", description="Operate a Ferry cluster.")
    parser.add_argument(
        "--server",
        action="append",
        help="NATS server URL (repeatable; default $FERRY_NATS_URL or nats://127.0.0.1:4222)",
    )
    parser.add_argument("--creds", default=os.environ.get("FERRY_NATS_CREDS", ""), help="NATS credentials file")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the coordinator")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    hosts = sub.add_parser("hosts", help="list hosts with state, health and capacity")
    hosts.add_argument("--json", action="store_true", help="machine-readable output")
    hosts.set_defaults(run=_cmd_hosts)
    return parser


def _settings(args: argparse.Namespace) -> NatsSettings:
    servers = args.server or os.environ.get("FERRY_NATS_URL", "nats://127.0.0.1:4222").split(",")
    return NatsSettings(servers=servers, creds=args.creds, request_timeout=args.timeout)


async def _main(args: argparse.Namespace) -> int:
    console = Console()
    err = Console(stderr=True)
    try:
        async with await FerryClient.connect(_settings(args)) as client:
            return await args.run(client, args, console)
    except FerryError as exc:
        err.print(f"ferry: {exc.code}: {exc.message}", markup=False, highlight=False)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
