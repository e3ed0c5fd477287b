"""Fuzzing, bounded in time: every decoder of the wire on arbitrary bytes and on
arbitrary JSON, and the CLI's renderers on replies full of arbitrary text.

Derandomized (the same examples every run) and without a database: no I/O and
no flaky failures. FERRY_FUZZ_SCALE=50 explores further when run by hand."""

import io
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from ferry.cli import convergence as cli_convergence
from ferry.cli import drain as cli_drain
from ferry.cli import main as cli_main
from ferry.cli import status as cli_status
from ferry.cli.output import say_error
from ferry.proto.api import HostsReply, HostState, HostView, PlanReply
from ferry.proto.convergence import ActionKind, PolicyAction, Prediction
from ferry.proto.drain import Drain, DrainItem, DrainState, ItemState
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import Capacity, HealthState, Versions, VmInfo, VmState
from ferry.proto.host import HealthCheck as Check
from ferry.proto.leader import BucketView, Lease, MemberView, Role, StatusReply
from ferry.proto.progress import Progress
from ferry.proto.session import MigrateOptions, Session, SessionState, Transition
from tests.support.decoders import all_decoders, wire_structs

# Examples per test, so that the whole file runs in about ten seconds: decoding
# is cheap, rendering a table with rich is not.
SCALE = int(os.environ.get("FERRY_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


DECODING = fuzz(400)
RENDERING = fuzz(50)

DECODERS = all_decoders()
NAMES = sorted(DECODERS)


def decodes_or_refuses(name: str, data: bytes) -> None:
    try:
        DECODERS[name].decode(data)
    except FerryError as exc:
        assert exc.code == ErrorCode.BAD_REQUEST, (name, exc)
        assert exc.message


@DECODING
@given(st.sampled_from(NAMES), st.binary(max_size=512))
def test_every_decoder_reads_any_bytes_or_refuses_them(name, data):
    decodes_or_refuses(name, data)


# JSON as an attacker writes it: huge and tiny numbers, deep lists and objects,
# strings with control characters and markup.
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**70),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


@DECODING
@given(st.sampled_from(NAMES), json_values)
def test_every_decoder_reads_any_json_or_refuses_it(name, value):
    decodes_or_refuses(name, json.dumps(value).encode())


def _field_keys(name: str) -> list[str]:
    type_ = wire_structs().get(name)
    fields = list(type_.__struct_fields__) if type_ is not None else []
    return fields or ["type", "session_id", "vm", "host", "vms"]


@st.composite
def shaped_like(draw, name: str) -> bytes:
    """An object with the type's own field names (and its tag), holding anything:
    past the first key, so validation itself is exercised."""
    keys = _field_keys(name)
    value = draw(st.dictionaries(st.sampled_from(keys), json_values, max_size=len(keys)))
    type_ = wire_structs().get(name)
    config = type_.__struct_config__ if type_ is not None else None
    if config is not None and config.tag and draw(st.booleans()):
        value[config.tag_field] = config.tag
    return json.dumps(value).encode()


@fuzz(200)
@given(st.sampled_from(NAMES).flatmap(lambda name: st.tuples(st.just(name), shaped_like(name))))
def test_every_decoder_reads_objects_shaped_like_its_type_or_refuses_them(case):
    decodes_or_refuses(*case)


# ----- the CLI's renderers on replies with arbitrary text -----

MARKUP = ["[", "]", "[/]", "[bold]", "[/bold]", "[link=file:///etc/passwd]", ":smiley:", "\x1b[31m", "\x07", "\u202e", "\\"]
texts = st.lists(st.one_of(st.sampled_from(MARKUP), st.text(max_size=8)), max_size=6).map("".join)
# Any float JSON can carry: a forged record may say the year 10**300.
seconds = st.floats(allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=2**63 - 1)


def render(*renderables) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)  # markup on: the renderers must not need it off
    for renderable in renderables:
        console.print(renderable)
    return console.file.getvalue()


def rendered_by(print_to) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    print_to(console)
    return console.file.getvalue()


host_views = st.builds(
    HostView,
    host=texts, state=st.sampled_from(HostState), health=st.sampled_from(HealthState), last_seen_age=seconds,
    capacity=st.builds(Capacity, cpus=counts, memory_total_mib=counts, memory_free_mib=counts),
    checks=st.lists(st.builds(Check, name=texts, state=st.sampled_from(HealthState), message=texts), max_size=3),
    vms=st.lists(st.builds(VmInfo, name=texts, state=st.sampled_from(VmState)), max_size=3),
    versions=st.builds(Versions, libvirt=texts, qemu=texts), cpu_model=texts,
    draining=st.booleans(), drain_reason=texts, vm_problems=st.lists(texts, max_size=3),
)


@RENDERING
@given(st.builds(HostsReply, hosts=st.lists(host_views, max_size=3), leader=texts))
def test_hosts_render_any_text(reply):
    out = rendered_by(lambda c: cli_main.print_hosts(reply, c))
    assert "\x1b" not in out


predictions = st.builds(
    Prediction, dirty_rate_bps=counts, bandwidth_bps=counts, memory_bytes=counts, converges=st.booleans(),
    expected_total_ms=counts, iterations=counts, steps_needed=st.lists(texts, max_size=3), reason=texts,
)
sessions = st.builds(
    Session,
    id=texts, vm=texts, source=texts, options=st.just(MigrateOptions()), state=st.sampled_from(SessionState),
    created_at=seconds, updated_at=seconds, dest=st.none() | texts, code=texts, reason=texts, waiting=texts,
    candidates_tried=st.lists(texts, max_size=2),
    history=st.lists(st.builds(Transition, at=seconds, state=st.sampled_from(SessionState), code=texts, reason=texts), max_size=3),
    progress=st.none() | st.builds(Progress, data_processed=counts, data_remaining=counts, bandwidth_bps=counts),
    steering=st.lists(
        st.builds(PolicyAction, kind=st.sampled_from(ActionKind), reason=texts, at=seconds,
                  sample=st.none() | st.builds(Progress, data_remaining=counts, bandwidth_bps=counts)),
        max_size=2,
    ),
    prediction=st.none() | predictions,
)


@RENDERING
@given(st.lists(sessions, min_size=1, max_size=3))
def test_sessions_render_any_text(items):
    out = render(cli_main.sessions_table(items)) + rendered_by(lambda c: cli_main.print_session(items[0], c))
    assert "\x1b" not in out


@RENDERING
@given(st.builds(
    PlanReply, vm=texts, source=texts, dest=st.none() | texts, candidates=st.lists(texts, max_size=3),
    rejections=st.lists(texts, max_size=3), policy=texts, prediction=st.none() | predictions, note=texts,
))
def test_plans_render_any_text(plan):
    assert "\x1b" not in rendered_by(lambda c: cli_convergence.print_plan(plan, c))


drains = st.builds(
    Drain, host=texts, state=st.sampled_from(DrainState), started_at=seconds, updated_at=seconds, reason=texts,
    items=st.lists(
        st.builds(DrainItem, vm=texts, state=st.sampled_from(ItemState), dest=st.none() | texts,
                  session_id=st.none() | texts, reason=texts, prediction=st.none() | predictions),
        max_size=3,
    ),
)


@RENDERING
@given(st.lists(drains, min_size=1, max_size=2))
def test_drains_render_any_text(items):
    out = render(cli_drain.drain_table(items[0]), cli_drain.drains_table(items), *map(cli_drain.item_line, items[0].items))
    assert "\x1b" not in out


@RENDERING
@given(st.builds(
    StatusReply, answered_by=texts, role=st.sampled_from(Role),
    leader=st.none() | st.builds(Lease, holder=texts, instance=texts, term=counts, since=seconds, renewed_at=seconds,
                                 lease_seconds=seconds),
    coordinators=st.lists(st.builds(MemberView, name=texts, role=st.sampled_from(Role), version=texts, started_at=seconds,
                                    seen_age=seconds, server=texts), max_size=2),
    nats_server=texts, nats_cluster=texts, nats_servers=st.lists(texts, max_size=2),
    buckets=st.lists(st.builds(BucketView, name=texts, replicas=counts, current=counts), max_size=2),
    draining=st.lists(texts, max_size=2),
))
def test_status_renders_any_text(reply):
    assert "\x1b" not in rendered_by(lambda c: cli_status.print_status(reply, c))


@DECODING  # cheap: no table
@given(st.builds(Lease, holder=texts, instance=texts, term=counts, since=seconds, renewed_at=seconds, lease_seconds=seconds),
       st.none() | seconds)
def test_the_leader_line_renders_any_lease(lease, age):
    line = cli_status.leader_line(StatusReply(answered_by="c1", role=Role.LEADER, leader=lease, lease_age=age))
    assert "\x1b" not in render(line)


@RENDERING
@given(texts, texts)
def test_errors_render_any_text(code, message):
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        say_error(code, message)
    assert "\x1b" not in err.getvalue() and err.getvalue().count("\n") == 1


def test_the_decoders_cover_every_wire_type():
    assert {name for name in wire_structs()} <= set(DECODERS)
    assert {"SessionUpdate", "CoordinatorEvent", "HostEvent", "heartbeat"} <= set(DECODERS)
