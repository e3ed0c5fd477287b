"""`ferry`: the operator's command line. It talks only to the coordinator."""

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Mapping

import msgspec
from rich.console import Console
from rich.progress import BarColumn, TaskProgressColumn, TextColumn
from rich.progress import Progress as Bar
from rich.table import Table
from rich.text import Text

from ferry.cli import completion as cli_completion
from ferry.cli import convergence as cli_convergence
from ferry.cli import drain as cli_drain
from ferry.cli import events as cli_events
from ferry.cli import ha as cli_ha
from ferry.cli import operate as cli_operate
from ferry.cli import settings as cli_settings
from ferry.cli import status as cli_status
from ferry.cli.client import FerryClient
from ferry.cli.output import plain, plain_console, print_json, say_error
from ferry.coordinator.progress_estimate import Estimate, ProgressEstimator, expected_bytes
from ferry.proto.api import (
    CancelRequest,
    HostsReply,
    HostsRequest,
    HostState,
    HostView,
    MigrateRequest,
    SessionsRequest,
)
from ferry.proto.codec import encode, request_decoder
from ferry.proto.convergence import POLICIES
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import HealthState
from ferry.proto.names import SessionId, VmName, printable
from ferry.proto.session import MigrateOptions, Progress, Session, SessionState, StorageMode
from ferry.runtime.config import NatsSettings
from ferry.runtime.logs import quiet_asyncio
from ferry.runtime.version import VERSION

MIB = 1024 * 1024
_MIGRATE_REQUEST = request_decoder(MigrateRequest, "migrate")
_STATE_STYLE = {
    SessionState.COMPLETED: "green",
    SessionState.FAILED: "red",
    SessionState.CANCELLED: "yellow",
}

_HEALTH_STYLE = {HealthState.OK: "green", HealthState.WARNING: "yellow", HealthState.CRITICAL: "red"}


def hosts_table(reply: HostsReply) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "STATE", "HEALTH", "VCPU", "MEMORY MiB", "VMS", "LIBVIRT", "QEMU", "CPU", "SEEN"):
        table.add_column(column)
    for h in reply.hosts:
        table.add_row(*_host_row(h))
    return table


def _host_row(h: HostView) -> list[str | Text]:
    cap = h.capacity
    state = Text(str(h.state), style="red" if h.state == HostState.LOST else "")
    if h.draining:
        state.append(" (draining)", style="yellow")
    if h.cordoned:
        state.append(" (cordoned)", style="yellow")
    health = Text(str(h.health), style=_HEALTH_STYLE.get(h.health, ""))
    return [
        plain(h.host),
        state,
        health,
        f"{cap.vcpus_used}/{cap.cpus}",
        f"{cap.memory_used_mib}/{cap.memory_total_mib}",
        # A summary leaves the VM list out; a coordinator from before vm_count sends none.
        str(max(h.vm_count, sum(1 for vm in h.vms if vm.state in ("running", "paused")))),
        plain(h.versions.libvirt or "-"),
        plain(h.versions.qemu or "-"),
        plain(h.cpu_model or "-"),
        f"{h.last_seen_age:.1f}s ago",
    ]


def print_hosts(reply: HostsReply, console: Console) -> None:
    """The hosts table, the leader, then each host's failing checks and dropped VM
    entries: probe messages and reasons are the hosts' own text, printed as written."""
    if not reply.hosts:
        console.print("no hosts have reported yet")
        return
    console.print(hosts_table(reply))
    console.print(plain(f"leader: {reply.leader or 'none right now'}", style="" if reply.leader else "red"))
    for h in reply.hosts:
        for check in h.checks:
            if check.state != HealthState.OK:
                line = f"{h.host}: {check.name} {check.state}: {check.message}"
                console.print(plain(line, style=_HEALTH_STYLE.get(check.state, "")))
        for problem in h.vm_problems:
            console.print(plain(f"{h.host}: {problem}", style="yellow"))


async def _cmd_hosts(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    # Counts, not VM lists, unless asked: thousands of hosts stay a few small replies.
    reply = await client.hosts(HostsRequest(vms=args.json and args.vms))
    if args.json:
        print_json(reply)
    else:
        print_hosts(reply, console)
    return 0


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def _route(s: Session) -> str:
    return f"{s.source} -> {s.dest or '?'}"


def eta_text(estimate: Estimate) -> str:
    """`12s (8-20s)`; `?` before a rate is known; `>= 8s` while the guest dirties as fast as the link sends."""
    if estimate.eta_seconds is None:
        return f">= {estimate.eta_low:.0f}s" if estimate.eta_low is not None else "?"
    high = f"{estimate.eta_high:.0f}s" if estimate.eta_high is not None else "?"
    return f"{estimate.eta_seconds:.0f}s ({estimate.eta_low:.0f}-{high})"


def _percent(p: Progress | None) -> str:
    if p is None or not (p.data_processed + p.data_remaining):
        return "-"
    return f"{100 * p.data_processed / (p.data_processed + p.data_remaining):.0f}%"


def summary(s: Session) -> str:
    """One line for people: what happened to the VM."""
    if s.state == SessionState.COMPLETED:
        o = s.outcome
        details = f" in {o.total_time_ms / 1000:.1f} s, downtime {o.downtime_ms} ms, {_mib(o.data_transferred)} sent" if o else ""
        tls = _encryption(s)
        return f"completed: {s.vm} moved {_route(s)}{details} ({tls})"
    if s.state.terminal:
        return f"{s.state}: {s.vm} {_route(s)}: {s.code}: {s.reason}"
    return f"{s.state}: {s.vm} {_route(s)}"


async def _cmd_migrate(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    storage = StorageMode.COPY if args.copy_storage else StorageMode.SHARED if args.shared_storage else StorageMode.AUTO
    request = MigrateRequest(
        vm=args.vm,
        source=args.source,
        dest=args.to,
        options=MigrateOptions(
            bandwidth_mib=args.bandwidth,
            storage=storage,
            tls=not args.no_tls,
            max_downtime_ms=args.max_downtime,
            priority=args.priority,
            policy=args.policy,
            allow_postcopy=args.allow_postcopy,
            seconds_per_gib=args.seconds_per_gib,
        ),
    )
    request = _validated(request)
    if args.dry_run:
        plan = await client.plan(request)
        if args.json:
            print_json(plan)
        else:
            cli_convergence.print_plan(plan, console)
        return 0
    session = await client.migrate(request)
    if not args.wait:
        if args.json:
            print_json(session)
        else:
            console.print(
                plain(f"session {session.id}: moving {session.vm} from {session.source} to {session.dest or 'a host Ferry chooses'}")
            )
        return 0
    final = await follow(client, session, console, quiet=args.json)
    if args.json:
        print_json(final)
    return _exit_for(final)


def _validated(request: MigrateRequest) -> MigrateRequest:
    """The same checks the coordinator makes, so bad flags fail before any request."""
    return _MIGRATE_REQUEST.decode(encode(request))


def _exit_for(session: Session) -> int:
    if session.state == SessionState.COMPLETED:
        return 0
    say_error(session.code or str(session.state), session.reason)
    return 1


async def follow(client: FerryClient, session: Session, console: Console, *, quiet: bool = False) -> Session:
    """Follows a session to its end: a live bar on a terminal, a line every few seconds elsewhere."""
    out = plain_console(stderr=True) if quiet else console
    bar = Bar(
        TextColumn("{task.description}", markup=False),  # a VM name, never markup
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}  {task.fields[left]}  ETA {task.fields[eta]}"),
        console=out,
        transient=True,
        disable=not out.is_terminal,
    )
    current = session
    last_line = 0.0
    # Percent that never runs backwards, from the prediction made before the move when there is one.
    estimator = ProgressEstimator(expected_bytes(session.prediction))
    with bar:
        task = bar.add_task(printable(session.vm), total=100, rate="", left="", eta="")
        async for item in client.follow(session):
            if isinstance(item, Session):
                current = item
                if not current.state.terminal:
                    bar.console.print(plain(f"session {current.id}: {summary(current)}"))
                continue
            left, rate = item.data_remaining, item.bandwidth_bps
            estimate = estimator.update(item)
            fields = dict(rate=f"{rate / MIB:.1f} MiB/s", left=f"{_mib(left)} left", eta=eta_text(estimate))
            bar.update(task, completed=estimate.percent, **fields)
            if not out.is_terminal and time.monotonic() - last_line >= 2.0:
                last_line = time.monotonic()
                out.print(f"  {estimate.percent:.0f}%  {fields['rate']}  {fields['left']}  ETA {fields['eta']}  "
                          f"iteration {item.iteration}", highlight=False)
    style = _STATE_STYLE.get(current.state, "")
    out.print(plain(summary(current), style=style))
    return current


def sessions_table(sessions: list[Session]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("SESSION", "VM", "FROM", "TO", "STATE", "DONE", "DOWNTIME", "AGE", "REASON"):
        table.add_column(column)
    now = time.time()
    for s in sessions:
        style = _STATE_STYLE.get(s.state)
        table.add_row(
            plain(s.id),
            plain(s.vm),
            plain(s.source),
            plain(s.dest or "-"),
            Text(str(s.state), style=style or ""),
            "100%" if s.state == SessionState.COMPLETED else _percent(s.progress),
            f"{s.outcome.downtime_ms} ms" if s.outcome else "-",
            f"{now - s.created_at:.0f}s",
            plain(f"{s.code}: {s.reason}" if s.code else (f"waiting: {s.waiting}" if s.state == SessionState.QUEUED else "")),
        )
    return table


async def _cmd_sessions(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    if args.limit < 1:
        raise FerryError(ErrorCode.BAD_REQUEST, f"--limit {args.limit}: give 1 or more")
    since = cli_events.parse_since(args.since, time.time()) if args.since else 0.0
    reply = await client.sessions_page(
        SessionsRequest(
            vm=args.vm, include_finished=not args.running, limit=min(args.limit, 10_000), since=since, before=args.before
        )
    )
    sessions = reply.sessions
    more = f"older sessions remain: ferry sessions --before {reply.next_before}" if reply.more else ""
    if args.json:
        print_json(sessions)
        if more:
            sys.stderr.write(more + "\n")  # stdout carries the JSON alone
    elif not sessions:
        console.print("no sessions")
    else:
        console.print(sessions_table(sessions))
    if more and not args.json:
        console.print(plain(more))
    return 0


def _encryption(s: Session) -> str:
    """What the stream used, as the source reported it; what was asked for until then."""
    if s.encryption:
        return "TLS" if s.encryption == "tls" else "no TLS"
    return "TLS" if s.options.tls else "no TLS"


def print_session(s: Session, console: Console) -> None:
    """One session for people: its summary, options, progress, the policy's steps and its history."""
    console.print(plain(f"session {s.id}: {summary(s)}"))
    o = s.options
    console.print(
        plain(
            f"  options: bandwidth {o.bandwidth_mib or 'unlimited'} MiB/s, storage {o.storage}, "
            f"{'TLS' if o.tls else 'no TLS'}, max downtime {o.max_downtime_ms} ms, priority {o.priority}, "
            f"policy {o.policy}{', post-copy allowed' if o.allow_postcopy else ''}"
        )
    )
    asked = f" (asked by {s.requested_by})" if s.requested_by else ""
    if s.origin != "user":
        console.print(plain(f"  started by: {s.origin} of {s.drain_host}{asked}"))
    elif s.requested_by:
        console.print(plain(f"  asked by: {s.requested_by}"))
    if s.cancelled_by:
        console.print(plain(f"  cancelled by: {s.cancelled_by}"))
    if s.encryption:
        console.print(plain(f"  stream: {_encryption(s)} (as the source agent ran it)"))
    if s.waiting and s.state == SessionState.QUEUED:
        console.print(plain(f"  waiting: {s.waiting}"))
    if s.bandwidth_applied_mib and s.bandwidth_applied_mib != o.bandwidth_mib:
        console.print(f"  bandwidth now: {s.bandwidth_applied_mib} MiB/s (the hosts' budget is shared)", highlight=False)
    if s.candidates_tried:
        console.print(plain(f"  destinations tried: {', '.join(s.candidates_tried)}"))
    if s.progress:
        p = s.progress
        # The coordinator's estimate (never runs backwards) when it gives one.
        done = f"{p.percent:.0f}%" if p.percent else _percent(p)
        eta = f", ETA {eta_text(Estimate(p.percent, 0, p.eta_seconds, p.eta_low, p.eta_high))}" if p.eta_low is not None else ""
        console.print(
            f"  progress: {done}{eta}, {_mib(p.data_processed)} sent, {_mib(p.data_remaining)} left, "
            f"{p.bandwidth_bps / MIB:.1f} MiB/s, dirty {p.dirty_rate_bps / MIB:.1f} MiB/s, iteration {p.iteration}",
            highlight=False,
        )
    cli_convergence.print_convergence(s, console)
    start = s.history[0].at if s.history else s.created_at
    for t in s.history:
        why = f"  {t.code}: {t.reason}" if t.code or t.reason else ""
        console.print(plain(f"  +{t.at - start:7.2f}s  {t.state}{why}"))


async def _cmd_session(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    s = await client.session(args.id)
    if args.json:
        print_json(s)
    else:
        print_session(s, console)
    return 0


def _fits(word: str, type_: object) -> bool:
    try:
        msgspec.convert(word, type_)
    except msgspec.ValidationError:
        return False
    return True


def cancel_request(word: str) -> CancelRequest:
    """`ferry cancel WORD`: a session id or a VM name. A word that may be either is sent
    as both; the coordinator takes the session of that id if there is one, else the
    VM's running session (one request, resolved where the records are)."""
    request = CancelRequest(id=word if _fits(word, SessionId) else None, vm=word if _fits(word, VmName) else None)
    if request.id is None and request.vm is None:
        raise FerryError(ErrorCode.BAD_REQUEST, f"{printable(word)!r} is neither a session id nor a VM name")
    return request


async def _cmd_cancel(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    request = cancel_request(args.target)
    s = await client.cancel(request.id, vm=request.vm)
    # With --json, stdout carries the JSON alone; what people read goes to stderr.
    people = plain_console(stderr=True) if args.json else console
    if s.state == SessionState.CANCELLED:
        people.print(plain(f"session {s.id}: cancelled; {s.vm} stays on {s.source}"))
    else:
        people.print(plain(f"session {s.id}: abort sent to {s.source}; {s.vm} stays there once it confirms"))
    if args.wait:
        s = await follow(client, s, people, quiet=args.json)
    if args.json:
        print_json(s)
    return 0 if not args.wait or s.state == SessionState.CANCELLED else 1


async def _cmd_bandwidth(client: FerryClient, args: argparse.Namespace, console: Console) -> int:
    s = await client.bandwidth(args.id, args.mib)
    if args.json:
        print_json(s)
    else:
        console.print(plain(f"session {s.id}: bandwidth {args.mib or 'unlimited'} MiB/s ({s.state})"))
    return 0


_SOURCES = """\
Settings come from, each overriding the one before: /etc/ferry/ferry.toml,
$XDG_CONFIG_HOME/ferry/ferry.toml (default ~/.config/ferry/ferry.toml), or instead
of both the file --config or $FERRY_CONFIG names; then $FERRY_NATS_URL,
$FERRY_IDENTITY, $FERRY_NATS_CREDS, $FERRY_NATS_TLS_CA, $FERRY_NATS_TLS_CERT,
$FERRY_NATS_TLS_KEY, $FERRY_TIMEOUT, $FERRY_VIA; then these flags. File keys:
servers, identity, creds, tls_ca, tls_cert, tls_key, timeout, via."""


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds above 0")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferry", description="Operate a Ferry cluster.", epilog=_SOURCES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ferry {VERSION}")
    parser.add_argument("--config", metavar="FILE", help="read this config file instead of the default ones ($FERRY_CONFIG)")
    parser.add_argument(
        "--server", action="append", metavar="URL",
        help="NATS server URL (repeatable, or URL,URL,...; default nats://127.0.0.1:4222)",
    )
    parser.add_argument("--identity", metavar="FILE", help="your Ferry identity file, from ferry-admin identities")
    parser.add_argument("--creds", metavar="FILE", help="NATS credentials file")
    parser.add_argument("--tls-ca", metavar="PEM", help="CA that signed the NATS servers' certificates")
    parser.add_argument("--tls-cert", metavar="PEM", help="client certificate, when the servers ask for one")
    parser.add_argument("--tls-key", metavar="PEM", help="its key")
    parser.add_argument(
        "--timeout", type=_seconds, metavar="SECONDS", help=f"to wait for the coordinator (default {cli_settings.DEFAULT_TIMEOUT:g})"
    )
    parser.add_argument(
        "--via", metavar="COORDINATOR",
        help="send the request through this coordinator (default: any; changes reach the leader either way)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    hosts = sub.add_parser("hosts", help="list hosts with state, health and capacity")
    hosts.add_argument("--json", action="store_true", help="machine-readable output")
    hosts.add_argument(
        "--vms", action="store_true",
        help="with --json: each host's VM list too (without it, vm_count says how many run: small at any fleet size)",
    )
    hosts.set_defaults(run=_cmd_hosts)

    migrate = sub.add_parser("migrate", help="live-migrate a running VM to another host")
    migrate.add_argument("vm")
    migrate.add_argument("--to", metavar="HOST", help="destination (default: the best host Ferry finds)")
    migrate.add_argument("--from", dest="source", metavar="HOST", help="source (default: where the VM runs)")
    migrate.add_argument("--bandwidth", type=int, default=0, metavar="MiB/s", help="speed limit (default: none)")
    storage = migrate.add_mutually_exclusive_group()
    storage.add_argument("--copy-storage", action="store_true", help="copy every disk along with memory")
    storage.add_argument(
        "--shared-storage", action="store_true", help="never copy disks; the destination must reach them"
    )
    migrate.add_argument("--no-tls", action="store_true", help="send memory unencrypted (trusted networks only)")
    migrate.add_argument("--max-downtime", type=int, default=300, metavar="MS", help="longest pause allowed (default 300, as QEMU)")
    migrate.add_argument("--priority", type=int, default=0, help="-100..100; higher goes first when queued")
    migrate.add_argument(
        "--policy", default="default", choices=list(POLICIES),
        help=f"how to make a busy guest converge (default: default). {cli_convergence.policies_help()}",
    )
    migrate.add_argument(
        "--allow-postcopy", action="store_true",
        help=f"let the policy switch to post-copy. Careful: {cli_convergence.POSTCOPY_WARNING}",
    )
    migrate.add_argument(
        "--seconds-per-gib", type=float, metavar="S", help="abort when it takes longer than this per GiB (default: the policy's)"
    )
    migrate.add_argument("--dry-run", action="store_true", help="show the destination and a prediction; move nothing")
    migrate.add_argument("--wait", action="store_true", help="follow the migration to its end")
    migrate.add_argument("--json", action="store_true", help="print the session as JSON")
    migrate.set_defaults(run=_cmd_migrate)

    sessions = sub.add_parser("sessions", help="list migration sessions")
    sessions.add_argument("--vm", help="only this VM's sessions")
    sessions.add_argument("--running", action="store_true", help="only sessions that have not ended")
    sessions.add_argument(
        "--since", metavar="T", help="only sessions going at or after T: 10m, 2h, 1d, or an ISO time (2026-12-01T10:00)"
    )
    sessions.add_argument(
        "--limit", type=int, default=50, metavar="N", help="the newest N (default 50), listed oldest first: the latest at the bottom"
    )
    sessions.add_argument("--before", default="", metavar="CURSOR", help="the page of older sessions the last listing named")
    sessions.add_argument("--json", action="store_true")
    sessions.set_defaults(run=_cmd_sessions)

    session = sub.add_parser("session", help="one session with its history")
    session.add_argument("id")
    session.add_argument("--json", action="store_true")
    session.set_defaults(run=_cmd_session)

    cancel = sub.add_parser("cancel", help="stop a migration; the VM stays on its source")
    cancel.add_argument("target", metavar="SESSION|VM", help="a session id, or a VM name: its one running session")
    cancel.add_argument("--wait", action="store_true", help="wait until the session has ended")
    cancel.add_argument("--json", action="store_true", help="print the session as JSON")
    cancel.set_defaults(run=_cmd_cancel)

    bandwidth = sub.add_parser("bandwidth", help="change the speed limit of a session, also while it runs")
    bandwidth.add_argument("id")
    bandwidth.add_argument("mib", type=int, metavar="MiB/s", help="0: unlimited")
    bandwidth.add_argument("--json", action="store_true", help="print the session as JSON")
    bandwidth.set_defaults(run=_cmd_bandwidth)
    cli_completion.add_command(sub, parser)
    cli_drain.add_commands(sub)
    cli_events.add_commands(sub)
    cli_operate.add_commands(sub)
    cli_ha.add_commands(sub)
    cli_status.add_commands(sub)
    return parser


def _flags(args: argparse.Namespace) -> cli_settings.ClientLayer:
    """The connection flags given on the command line (the last layer of settings)."""
    given = {
        "servers": cli_settings.split_urls(args.server) if args.server else None,
        "identity": args.identity, "creds": args.creds, "tls_ca": args.tls_ca, "tls_cert": args.tls_cert,
        "tls_key": args.tls_key, "timeout": args.timeout, "via": args.via,
    }
    return cli_settings.ClientLayer(**{key: value for key, value in given.items() if value is not None})


def client_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> cli_settings.ClientSettings:
    return cli_settings.load(_flags(args), environ, os.path.expanduser("~"), named=args.config)


def _settings(args: argparse.Namespace) -> NatsSettings:
    return client_settings(args, os.environ).nats


def with_version_everywhere(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--version` after any command too (`ferry hosts --version`), commands that
    other modules register included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                if "--version" not in command._option_string_actions:
                    command.add_argument("--version", action="version", version=f"ferry {VERSION}")
                with_version_everywhere(command)
    return parser


async def _main(args: argparse.Namespace) -> int:
    # Lines are not wrapped: scripts and logs read them whole.
    console = plain_console()
    try:
        settings = client_settings(args, os.environ)
        async with await FerryClient.connect(settings.nats, via=settings.via) as client:
            return await args.run(client, args, console)
    except FerryError as exc:
        say_error(exc.code, exc.message)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = with_version_everywhere(build_parser()).parse_args(argv)
    local = getattr(args, "local", None)
    if local is not None:
        return local(args)  # needs no connection (`ferry completion`)
    quiet_asyncio()
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
