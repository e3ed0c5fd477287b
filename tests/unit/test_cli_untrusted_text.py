"""Text from hosts, users and the coordinator is printed as written: never taken
as rich markup, emoji codes or terminal control, whatever the console's settings."""

import io

import msgspec
import pytest
from rich.console import Console

from ferry.cli import convergence as cli_convergence
from ferry.cli import drain as cli_drain
from ferry.cli import main as cli_main
from ferry.cli import status as cli_status
from ferry.cli.output import plain, say_error
from ferry.proto.api import HostsReply, HostState, HostView, PlanReply
from ferry.proto.convergence import ActionKind, PolicyAction, Prediction
from ferry.proto.drain import Drain, DrainItem, DrainState, ItemState
from ferry.proto.host import Capacity, HealthCheck, HealthState, Versions
from ferry.proto.leader import BucketView, Lease, MemberView, Role, StatusReply
from ferry.proto.session import MigrateOptions, Session, SessionState, Transition

TRICKY = [
    "md array [/dev/md0] degraded",
    "[bold]x[/]",
    "[/]",
    "[link=file:///etc/passwd]a[/link]",
    ":smiley: [red]",
    "\\[escaped] and [not closed",
]


def console(*, markup: bool = True) -> Console:
    """A console that would interpret markup, emoji and highlighting, had it the chance."""
    return Console(file=io.StringIO(), width=400, markup=markup, emoji=markup, highlight=markup, color_system=None)


def printed(c: Console) -> str:
    return c.file.getvalue()


def host(text: str = "x", **changes) -> HostView:
    view = HostView(
        host="hv1", state=HostState.UP, health=HealthState.WARNING, last_seen_age=1.0,
        capacity=Capacity(cpus=4, memory_total_mib=1024, memory_free_mib=512),
        checks=[HealthCheck(name="raid", state=HealthState.WARNING, message=text)],
        vm_problems=[f"VM entry 0 ({text!r}) was dropped"],
        versions=Versions(libvirt=text, qemu=text), cpu_model=text,
    )
    return view if not changes else HostView(**{**{f: getattr(view, f) for f in view.__struct_fields__}, **changes})


@pytest.mark.parametrize("markup", [True, False])
def test_hosts_prints_a_probe_message_with_brackets_as_text(markup):
    c = console(markup=markup)
    cli_main.print_hosts(HostsReply(hosts=[host("md array [/dev/md0] degraded")], leader="c1"), c)
    assert "hv1: raid warning: md array [/dev/md0] degraded" in printed(c)


@pytest.mark.parametrize("text", TRICKY)
def test_hosts_prints_markup_like_text_verbatim(text):
    c = console()
    cli_main.print_hosts(HostsReply(hosts=[host(text)], leader=text), c)
    out = printed(c)
    assert f"hv1: raid warning: {text}" in out
    assert f"leader: {text}" in out
    assert f"hv1: VM entry 0 ({text!r}) was dropped" in out


def test_terminal_control_characters_are_shown_as_escapes():
    c = console()
    cli_main.print_hosts(HostsReply(hosts=[host("\x1b[2J\x1b]8;;http://x\x07link\u202egnp.exe")]), c)
    out = printed(c)
    assert "\x1b" not in out and "\u202e" not in out
    assert "hv1: raid warning: \\x1b[2J\\x1b]8;;http://x\\x07link\\u202egnp.exe" in out


def session(text: str) -> Session:
    return Session(
        id="abc123", vm=text, source="hv1", dest="hv2", options=MigrateOptions(), state=SessionState.FAILED,
        created_at=100.0, updated_at=110.0, code=text, reason=text, waiting=text, candidates_tried=["hv2"],
        history=[Transition(at=100.0, state=SessionState.QUEUED), Transition(at=110.0, state=SessionState.FAILED, code=text, reason=text)],
        steering=[PolicyAction(kind=ActionKind.ABORT, reason=text, at=105.0)],
        prediction=Prediction(dirty_rate_bps=1, bandwidth_bps=2, memory_bytes=3, converges=False, steps_needed=[text], reason=text),
    )


@pytest.mark.parametrize("text", TRICKY)
def test_sessions_print_names_and_reasons_verbatim(text):
    c = console()
    s = session(text)
    c.print(cli_main.sessions_table([s]))
    cli_main.print_session(s, c)
    out = printed(c)
    assert f"session abc123: failed: {text} hv1 -> hv2: {text}: {text}" in out
    assert f"policy abort: {text}" in out
    assert f"needs: {text}" in out
    assert f"{text}: {text}" in out  # the table's REASON column


@pytest.mark.parametrize("text", TRICKY)
def test_a_plan_prints_rejections_verbatim(text):
    c = console()
    plan = PlanReply(vm=text, source="hv1", dest=None, candidates=["hv2", "hv3"], rejections=[text], note=text)
    cli_convergence.print_plan(plan, c)
    out = printed(c)
    assert f"dry run: {text} would move hv1 -> nowhere" in out
    assert f"  not {text}" in out and f"  {text}" in out


@pytest.mark.parametrize("text", TRICKY)
def test_drains_print_reasons_verbatim(text):
    c = console()
    drain = Drain(
        host="hv1", state=DrainState.RUNNING, started_at=1.0, updated_at=2.0, reason=text,
        items=[DrainItem(vm=text, state=ItemState.GAVE_UP, reason=text)],
    )
    c.print(cli_drain.drain_table(drain))
    c.print(cli_drain.drains_table([drain]))
    c.print(cli_drain.item_line(drain.items[0]))
    out = printed(c)
    assert f"  {text}: gave_up: {text}" in out
    assert out.count(text) >= 4


@pytest.mark.parametrize("text", TRICKY)
def test_status_prints_names_verbatim(text):
    c = console()
    reply = StatusReply(
        answered_by=text, role=Role.LEADER,
        leader=Lease(holder=text, instance="i", term=3, since=0.0, renewed_at=0.0, lease_seconds=10.0),
        coordinators=[MemberView(name=text, role=Role.LEADER, version=text, started_at=0.0, seen_age=1.0, server=text)],
        nats_server=text, buckets=[BucketView(name=text, replicas=3, current=1)], draining=[text],
    )
    cli_status.print_status(reply, c)
    out = printed(c)
    assert f"answered by  {text} (leader)" in out
    assert f"nats         {text}, a single server" in out
    assert f"kv buckets   {text} R3 (1 current)" in out
    assert f"draining: {text}" in out


def test_plain_keeps_printable_text_and_its_style():
    shown = plain("[red]x[/red] é", style="yellow")
    assert shown.plain == "[red]x[/red] é" and str(shown.style) == "yellow"


def test_errors_on_stderr_show_control_characters_as_escapes(capsys):
    say_error("bad_request", "no VM named \x1b[31mweb\x1b[0m")
    assert capsys.readouterr().err == "ferry: bad_request: no VM named \\x1b[31mweb\\x1b[0m\n"


@pytest.mark.parametrize("since, shown", [(1e300, "1e+300 (not a date)"), (-1e300, "-1e+300 (not a date)"), (1e18, "1e+18 (not a date)")])
def test_a_lease_from_beyond_any_calendar_is_shown_as_its_number(since, shown):
    reply = StatusReply(
        answered_by="c1", role=Role.LEADER, leader=Lease(holder="c1", instance="i", term=1, since=since, renewed_at=0.0, lease_seconds=10.0)
    )
    assert cli_status.leader_line(reply).plain == f"leader       c1 (term 1, since {shown})"


def test_a_session_says_who_asked_who_cancelled_and_what_the_stream_used():
    s = msgspec.structs.replace(
        session("g1"), requested_by="alice", cancelled_by="carol", encryption="tls",
        options=msgspec.structs.replace(session("g1").options, tls=True),
    )
    c = console()
    cli_main.print_session(s, c)
    out = printed(c)
    assert "asked by: alice" in out and "cancelled by: carol" in out
    assert "stream: TLS (as the source agent ran it)" in out
