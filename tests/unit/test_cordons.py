"""Cordoned hosts, decided in pure code: placement, drains and evacuations leave
them out; a destination named with `--to` is refused; the marks on the hosts'
views; and the operator's levers' records in a session."""

import msgspec
import pytest

from ferry.coordinator import drain_plan
from ferry.coordinator.admission import Admit, Queued, Refuse, admit
from ferry.coordinator.cordons import refuse_cordoned_dest, with_cordons
from ferry.coordinator.placement import HostFacts, PlacementRules, VmDemand, rank, reject_reason
from ferry.coordinator.session_rules import host_facts
from ferry.coordinator.sessions.levers import refusal, with_action
from ferry.proto.api import Cordon, HostState, HostView, RefusalCode
from ferry.proto.convergence import ActionKind, PolicyAction
from ferry.proto.errors import FerryError
from ferry.proto.host import Capacity, HealthState
from ferry.proto.limits import Limits
from ferry.proto.session import MigrateOptions, Session, SessionState

VM = VmDemand(name="g1", source="hv1", vcpus=2, memory_mib=1024, libvirt_version="9.0.0", qemu_version="7.2.0")


def host(name: str, **kw) -> HostFacts:
    base = dict(name=name, up=True, health=HealthState.OK, cpus=4, vcpus_used=0, memory_total_mib=8192,
                memory_free_mib=8000, memory_used_mib=0, libvirt_version="9.0.0", qemu_version="7.2.0")
    return HostFacts(**{**base, **kw})


def view(name: str, **kw) -> HostView:
    base = dict(host=name, state=HostState.UP, health=HealthState.OK, last_seen_age=0.5,
                capacity=Capacity(cpus=4, memory_total_mib=8192, memory_free_mib=8000))
    return HostView(**{**base, **kw})


# ----- placement -----


def test_a_cordoned_host_is_rejected_with_its_own_code():
    rejection = reject_reason(VM, host("hv2", cordoned=True), PlacementRules())
    assert (rejection.code, rejection.reason) == ("host_cordoned", "hv2 is cordoned: no new VMs are placed there")


def test_placement_picks_the_other_host_even_when_the_cordoned_one_has_more_room():
    ranking = rank(VM, [host("big", cordoned=True, memory_total_mib=65536, memory_free_mib=65000), host("small")])
    assert [name for name, _ in ranking.choices] == ["small"]
    assert [(r.host, r.code) for r in ranking.rejections] == [("big", "host_cordoned")]


def test_a_drain_plan_does_not_pick_a_cordoned_host():
    moves = drain_plan.plan([VM], [host("hv1"), host("hv2", cordoned=True), host("hv3")])
    assert [(m.vm, m.dest) for m in moves] == [("g1", "hv3")]
    (unplaced,) = drain_plan.plan([VM], [host("hv1"), host("hv2", cordoned=True)])
    assert unplaced.dest is None and "hv2 is cordoned" in unplaced.reason


def test_admission_hints_a_drain_towards_a_cordoned_host_in_vain():
    # A drain planned before the cordon hints hv2; admission places the VM elsewhere.
    queued = Queued(session_id="s1", demand=VM, created_at=1.0, hint="hv2")
    (decision,) = admit(Limits(), [queued], [], [host("hv2", cordoned=True), host("hv3")])
    assert isinstance(decision, Admit) and decision.dest == "hv3"
    (decision,) = admit(Limits(), [queued], [], [host("hv2", cordoned=True)])
    assert isinstance(decision, Refuse) and "hv2: hv2 is cordoned" in decision.reason


def test_host_facts_carry_the_cordon_mark():
    facts = host_facts([view("hv2", cordoned=True), view("hv3")], [])
    assert [(f.name, f.cordoned) for f in facts] == [("hv2", True), ("hv3", False)]


# ----- marks and a named destination -----

CORDON = Cordon(host="hv2", reason="firmware update", by="alice", at=1000.0)


def test_views_get_the_cordon_records_kv_holds():
    marked = with_cordons([view("hv2"), view("hv3", draining=True)], {"hv2": CORDON})
    assert [(v.host, v.cordoned, v.cordon, v.draining) for v in marked] == [
        ("hv2", True, CORDON, False), ("hv3", False, None, True),
    ]


def test_a_named_cordoned_destination_is_refused_with_host_cordoned():
    hosts = with_cordons([view("hv2"), view("hv3")], {"hv2": CORDON})
    with pytest.raises(FerryError) as refused:
        refuse_cordoned_dest("hv2", hosts)
    assert refused.value.code == RefusalCode.HOST_CORDONED == "host_cordoned"
    assert refused.value.message == (
        "the destination hv2 is cordoned (firmware update): no new VMs are placed there "
        "(ferry uncordon hv2 allows them again)"
    )


@pytest.mark.parametrize("dest", ["hv3", "unknown"])
def test_other_destinations_pass(dest):
    refuse_cordoned_dest(dest, with_cordons([view("hv2"), view("hv3")], {"hv2": CORDON}))


# ----- the levers' records in a session -----


def session(state: SessionState, **kw) -> Session:
    return Session(
        id="abc123", vm="g1", source="hv1", dest="hv2", options=MigrateOptions(), state=state,
        created_at=1.0, updated_at=1.0, **kw,
    )


@pytest.mark.parametrize(
    "state, why",
    [
        (SessionState.MIGRATING, None),
        (SessionState.QUEUED, "session abc123 is queued: its migration has not started yet; downtime acts only on a running migration"),
        (SessionState.PREPARING, "session abc123 is preparing: its migration has not started yet; downtime acts only on a running migration"),
        (SessionState.POSTCOPY, "session abc123 is in post-copy: g1 already runs on hv2; nothing is left to steer; downtime acts only on a running migration"),
        (SessionState.COMPLETED, "session abc123 has already ended (completed); downtime acts only on a running migration"),
        (SessionState.FAILED, "session abc123 has already ended (failed); downtime acts only on a running migration"),
    ],
)
def test_only_a_running_migration_takes_an_operator_lever(state, why):
    refused = refusal(session(state), "downtime")
    if why is None:
        assert refused is None
    else:
        assert (refused.code, refused.message) == ("not_running", why)


POSTCOPY = PolicyAction(kind=ActionKind.POSTCOPY, reason="force-complete by alice", at=50.0)
PAUSE = PolicyAction(kind=ActionKind.PAUSE, reason="force-complete by alice", at=50.0, value=3000)


def test_a_forced_postcopy_is_recorded_once_and_moves_the_session_to_postcopy():
    once = with_action(session(SessionState.MIGRATING), POSTCOPY, at=60.0)
    assert once.state == SessionState.POSTCOPY and once.steering == [POSTCOPY]
    assert once.history[-1].state == SessionState.POSTCOPY and once.history[-1].at == 50.0
    # The source's own report of the same action arrives second: nothing changes.
    assert with_action(once, POSTCOPY, at=61.0) is once


def test_a_forced_pause_is_recorded_and_the_session_stays_migrating():
    paused = with_action(session(SessionState.MIGRATING), PAUSE, at=60.0)
    assert paused.state == SessionState.MIGRATING and paused.steering == [PAUSE]


def test_an_ended_session_records_nothing_more():
    ended = session(SessionState.COMPLETED)
    assert with_action(ended, PAUSE, at=60.0) is ended
    assert msgspec.structs.asdict(ended)["steering"] == []
