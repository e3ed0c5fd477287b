import random
from collections import defaultdict

import pytest

from ferry.coordinator.drain_plan import (
    PlannedMove,
    StartSession,
    new_drain,
    not_started,
    plan,
    started,
    step,
)
from ferry.coordinator.placement import (
    HostFacts,
    PlacementRules,
    VmDemand,
    available_memory_mib,
)
from ferry.proto.drain import Drain, DrainItem, DrainState, ItemState
from ferry.proto.events import DrainFinished, DrainGaveUp, DrainRetry
from ferry.proto.host import HealthState
from ferry.proto.session import MigrateOptions, Session, SessionCode, SessionState

# plan


def host(name, **kw) -> HostFacts:
    base = dict(name=name, up=True, health=HealthState.OK, cpus=4, vcpus_used=0, memory_total_mib=8192,
                memory_free_mib=8000, memory_used_mib=0, libvirt_version="9.0.0", qemu_version="7.2.0")
    return HostFacts(**{**base, **kw})


def vm(name, memory_mib=1024, vcpus=2, source="hv1") -> VmDemand:
    return VmDemand(name=name, source=source, vcpus=vcpus, memory_mib=memory_mib, libvirt_version="9.0.0",
                    qemu_version="7.2.0")


def test_an_empty_host_plans_nothing():
    assert plan([], [host("hv1"), host("hv2")]) == []


def test_vms_are_planned_biggest_first_by_memory_then_vcpus_then_name():
    vms = [vm("small", 512), vm("big-b", 2048, vcpus=1), vm("big-a", 2048, vcpus=1), vm("big-cpu", 2048, vcpus=4)]
    moves = plan(vms, [host("hv2")])
    assert [m.vm for m in moves] == ["big-cpu", "big-a", "big-b", "small"]


def test_the_biggest_vm_gets_the_host_with_the_most_room():
    hosts = [host("hv2", memory_used_mib=2048), host("hv3")]
    moves = plan([vm("small", 512), vm("big", 4096)], hosts)
    assert moves[0] == PlannedMove("big", "hv3")


def test_two_vms_that_each_fit_alone_but_not_together_go_to_different_hosts():
    hosts = [host("hv2", memory_free_mib=5000), host("hv3", memory_free_mib=4000)]
    moves = plan([vm("a", 3000), vm("b", 3000)], hosts)
    assert {m.vm: m.dest for m in moves} == {"a": "hv2", "b": "hv3"}


def test_a_vm_that_only_fitted_before_the_others_were_placed_is_unplaced_with_a_reason():
    moves = plan([vm("a", 3000), vm("b", 3000)], [host("hv1"), host("hv2", memory_free_mib=5000)])
    assert moves == [
        PlannedMove("a", "hv2"),
        PlannedMove("b", None, "no host can take b: hv2: hv2 has 2000 MiB free for VMs, b needs 3128 MiB"),
    ]


def test_small_vms_fill_in_what_the_big_ones_leave():
    # hv2 takes the big one, hv3 the medium one; the small one still fits on hv2.
    hosts = [host("hv2", memory_free_mib=6000), host("hv3", memory_free_mib=3000)]
    moves = plan([vm("small", 1000), vm("big", 4500), vm("medium", 2500)], hosts)
    assert {m.vm: m.dest for m in moves} == {"big": "hv2", "medium": "hv3", "small": "hv2"}


def test_the_vcpu_ratio_is_respected_across_the_plan():
    # 4 CPUs x 4 = 16 vCPUs per host, 10 in use: one 6-vCPU VM per host.
    hosts = [host("hv2", vcpus_used=10), host("hv3", vcpus_used=10)]
    moves = plan([vm("a", 512, vcpus=6), vm("b", 512, vcpus=6), vm("c", 512, vcpus=6)], hosts)
    assert sorted(m.dest or "-" for m in moves) == ["-", "hv2", "hv3"]
    (unplaced,) = [m for m in moves if m.dest is None]
    assert "would have 22 vCPUs on 4 CPUs (limit 16)" in unplaced.reason


@pytest.mark.parametrize(
    "other",
    [host("hv2", draining=True), host("hv2", up=False), host("hv2", health=HealthState.WARNING),
     host("hv2", health=HealthState.CRITICAL), host("hv2", arch="aarch64")],
)
def test_hosts_that_cannot_take_vms_are_not_planned_for(other):
    (move,) = plan([vm("g1")], [host("hv1"), other])
    assert move.dest is None and move.reason.startswith("no host can take g1: hv2: ")


def test_the_drained_host_itself_is_not_named_in_the_reason():
    (move,) = plan([vm("g1")], [host("hv1")])
    assert move == PlannedMove("g1", None, "no host can take g1: no other host reports")


def test_the_rules_are_used():
    (move,) = plan([vm("g1", 1024)], [host("hv2", memory_free_mib=2000)], PlacementRules(memory_margin_mib=1000))
    assert move.dest is None and "g1 needs 2024 MiB" in move.reason


def random_drain(seed: int):
    rng = random.Random(seed)
    hosts = [host("hv1", draining=True)] + [
        host(
            f"hv{i}",
            cpus=rng.choice([2, 4, 8]),
            vcpus_used=rng.randint(0, 16),
            memory_total_mib=16384,
            memory_free_mib=rng.randint(0, 16384),
            memory_used_mib=rng.randint(0, 12000),
            reserved_vcpus=rng.choice([0, 0, 2]),
            reserved_memory_mib=rng.choice([0, 0, 1024]),
        )
        for i in range(2, rng.randint(3, 7))
    ]
    vms = [vm(f"g{i}", rng.choice([256, 512, 1024, 2048, 4096, 8192]), rng.randint(1, 8))
           for i in range(rng.randint(1, 20))]
    return hosts, vms


@pytest.mark.parametrize("seed", range(50))
def test_a_plan_never_overcommits_a_host(seed):
    hosts, vms = random_drain(seed)
    rules = PlacementRules()
    moves = plan(vms, hosts, rules)
    assert sorted(m.vm for m in moves) == sorted(v.name for v in vms)
    sizes = {v.name: v for v in vms}
    memory, vcpus = defaultdict(int), defaultdict(int)
    for m in moves:
        if m.dest is None:
            assert m.reason.startswith(f"no host can take {m.vm}: ")
        else:
            memory[m.dest] += sizes[m.vm].memory_mib
            vcpus[m.dest] += sizes[m.vm].vcpus
    for h in hosts:
        if h.name in memory:
            assert h.name != "hv1"
            assert memory[h.name] <= available_memory_mib(h) - rules.memory_margin_mib
            assert h.vcpus_used + h.reserved_vcpus + vcpus[h.name] <= h.cpus * rules.cpu_allocation_ratio


@pytest.mark.parametrize("seed", range(50))
def test_an_unplaced_vm_fits_nowhere_once_the_plan_is_counted(seed):
    hosts, vms = random_drain(seed)
    rules = PlacementRules()
    moves = plan(vms, hosts, rules)
    sizes = {v.name: v for v in vms}
    memory, vcpus = defaultdict(int), defaultdict(int)
    for m in moves:  # in plan order: what was placed before each unplaced VM
        if m.dest is not None:
            memory[m.dest] += sizes[m.vm].memory_mib
            vcpus[m.dest] += sizes[m.vm].vcpus
            continue
        v = sizes[m.vm]
        for h in hosts[1:]:
            fits_memory = available_memory_mib(h) - memory[h.name] >= v.memory_mib + rules.memory_margin_mib
            vcpus_after = h.vcpus_used + h.reserved_vcpus + vcpus[h.name] + v.vcpus
            fits_vcpus = vcpus_after <= h.cpus * rules.cpu_allocation_ratio
            assert not (fits_memory and fits_vcpus), (m.vm, h.name)


# step

NOW = 1000.0
DELAY = 30.0
ON_HOST = {"g1": (2, 1024)}


def session(state=SessionState.MIGRATING, id="sess01", dest="hv2", code="", reason="", vm="g1") -> Session:
    return Session(id=id, vm=vm, source="hv1", options=MigrateOptions(), state=state, created_at=1.0,
                   updated_at=2.0, dest=dest, code=code, reason=reason)


def item(vm="g1", **kw) -> DrainItem:
    return DrainItem(vm=vm, **{"vcpus": 2, "memory_mib": 1024, **kw})


def drain(*items, max_attempts=3, state=DrainState.RUNNING) -> Drain:
    return Drain(host="hv1", state=state, started_at=1.0, updated_at=1.0, max_attempts=max_attempts,
                 items=list(items))


def one(result) -> DrainItem:
    (only,) = result.drain.items
    return only


def test_a_drain_that_is_done_is_left_alone():
    done = drain(item(state=ItemState.PLANNED), state=DrainState.DONE)
    result = step(done, {}, ON_HOST, NOW, retry_delay=DELAY)
    assert result.drain is done and result.start == [] and result.events == []


def test_a_planned_vm_is_started_towards_its_planned_host():
    result = step(drain(item(dest="hv3")), {}, ON_HOST, NOW, retry_delay=DELAY)
    assert result.start == [StartSession(vm="g1", hint="hv3", avoid=[], attempt=1)]
    assert one(result) == item(dest="hv3")  # the caller marks it started once the session exists
    assert result.events == []
    assert result.drain.state == DrainState.RUNNING and result.drain.updated_at == NOW


def test_an_unplaced_vm_is_started_without_a_hint():
    result = step(drain(item(reason="no host can take g1: …")), {}, ON_HOST, NOW, retry_delay=DELAY)
    assert result.start == [StartSession(vm="g1", hint=None, avoid=[], attempt=1)]


@pytest.mark.parametrize(
    "state, item_state",
    [
        (SessionState.QUEUED, ItemState.QUEUED),
        (SessionState.PREPARING, ItemState.MOVING),
        (SessionState.MIGRATING, ItemState.MOVING),
        (SessionState.POSTCOPY, ItemState.MOVING),
    ],
)
def test_a_vm_whose_session_runs_follows_the_session(state, item_state):
    before = item(state=ItemState.QUEUED, session_id="sess01", attempts=1, dest="hv3")
    result = step(drain(before), {"sess01": session(state, dest="hv2")}, ON_HOST, NOW, retry_delay=DELAY)
    assert one(result) == item(state=item_state, session_id="sess01", attempts=1, dest="hv2")
    assert result.start == [] and result.events == []


def test_a_running_session_without_a_destination_yet_keeps_the_planned_one():
    before = item(state=ItemState.QUEUED, session_id="sess01", attempts=1, dest="hv3")
    result = step(drain(before), {"sess01": session(SessionState.QUEUED, dest=None)}, ON_HOST, NOW, retry_delay=DELAY)
    assert one(result).dest == "hv3"


def test_a_completed_session_moves_the_vm_and_clears_the_reason():
    before = item(state=ItemState.MOVING, session_id="sess01", attempts=2, dest="hv3", reason="earlier failure")
    result = step(drain(before), {"sess01": session(SessionState.COMPLETED, dest="hv4")}, {}, NOW, retry_delay=DELAY)
    assert one(result) == item(state=ItemState.MOVED, session_id="sess01", attempts=2, dest="hv4")


@pytest.mark.parametrize(
    "attempts, delay, retry_at",
    [(1, 30.0, NOW + 30.0), (2, 30.0, NOW + 60.0), (2, 0.0, NOW)],
)
def test_a_failed_attempt_is_retried_elsewhere_after_a_pause(attempts, delay, retry_at):
    before = item(state=ItemState.MOVING, session_id="sess01", attempts=attempts, dest="hv2")
    failed = session(SessionState.FAILED, dest="hv2", code="migration_failed", reason="connection reset")
    result = step(drain(before), {"sess01": failed}, ON_HOST, NOW, retry_delay=delay)
    assert one(result) == item(
        state=ItemState.RETRYING, attempts=attempts, failed_on=["hv2"],
        reason="migration_failed: connection reset", retry_at=retry_at,
    )
    assert result.events == [
        DrainRetry(host="hv1", vm="g1", attempt=attempts + 1, failed_on="hv2",
                   reason="migration_failed: connection reset")
    ]
    assert result.start == []  # not in this step, even with no pause: the VM's state is read again first


def test_a_session_nobody_could_confirm_is_waited_for_not_retried():
    before = item(state=ItemState.MOVING, session_id="sess01", attempts=3, dest="hv2")
    unsure = session(SessionState.FAILED, dest="hv2", code="not_confirmed", reason="hv1 does not answer")
    result = step(drain(before), {"sess01": unsure}, ON_HOST, NOW, retry_delay=DELAY)
    assert one(result).state == ItemState.MOVING and one(result).session_id == "sess01"
    assert "not confirmed yet" in one(result).reason
    assert result.start == [] and result.events == [], "no new attempt, no giving up: its VM is still claimed"


def test_a_failure_without_a_destination_adds_no_failed_host():
    before = item(state=ItemState.QUEUED, session_id="sess01", attempts=1, failed_on=["hv2"])
    failed = session(SessionState.FAILED, dest=None, code="no_destination", reason="no host can take g1")
    result = step(drain(before), {"sess01": failed}, ON_HOST, NOW, retry_delay=DELAY)
    assert one(result).failed_on == ["hv2"]
    assert result.events[0].failed_on is None


def test_a_host_that_failed_twice_is_listed_once():
    before = item(state=ItemState.MOVING, session_id="sess01", attempts=2, failed_on=["hv2"])
    failed = session(SessionState.FAILED, dest="hv2", code="migration_failed", reason="again")
    result = step(drain(before), {"sess01": failed}, ON_HOST, NOW, retry_delay=DELAY)
    assert one(result).failed_on == ["hv2"]


def test_a_session_cancelled_for_another_reason_is_retried():
    before = item(state=ItemState.MOVING, session_id="sess01", attempts=1)
    ended = session(SessionState.CANCELLED, dest="hv2", code=SessionCode.DEST_UNREACHABLE, reason="hv2 went away")
    result = step(drain(before), {"sess01": ended}, ON_HOST, NOW, retry_delay=DELAY)
    assert one(result).state == ItemState.RETRYING


@pytest.mark.parametrize("retry_at, starts", [(NOW + 1, False), (NOW, True), (NOW - 1, True)])
def test_a_retry_starts_once_its_pause_is_over_avoiding_the_hosts_that_failed(retry_at, starts):
    before = item(state=ItemState.RETRYING, attempts=1, failed_on=["hv2", "hv3"], retry_at=retry_at)
    result = step(drain(before), {}, ON_HOST, NOW, retry_delay=DELAY)
    expected = [StartSession(vm="g1", hint=None, avoid=["hv2", "hv3"], attempt=2)] if starts else []
    assert result.start == expected
    assert one(result) == before


@pytest.mark.parametrize("max_attempts, attempts, gives_up", [(3, 1, False), (3, 2, False), (3, 3, True),
                                                               (3, 4, True), (1, 1, True)])
def test_retries_are_bounded_by_max_attempts(max_attempts, attempts, gives_up):
    before = item(state=ItemState.MOVING, session_id="sess01", attempts=attempts)
    failed = session(SessionState.FAILED, dest="hv2", code="migration_failed", reason="boom")
    result = step(drain(before, max_attempts=max_attempts), {"sess01": failed}, ON_HOST, NOW, retry_delay=DELAY)
    after = one(result)
    if gives_up:
        why = f"gave up after {attempts} attempts; last: migration_failed: boom"
        assert after == item(state=ItemState.GAVE_UP, attempts=attempts, failed_on=["hv2"], reason=why)
        assert result.events[0] == DrainGaveUp(host="hv1", vm="g1", attempts=attempts, reason=why)
    else:
        assert after.state == ItemState.RETRYING
        assert [type(e) for e in result.events] == [DrainRetry]


def test_a_session_the_user_cancelled_gives_the_vm_up():
    before = item(state=ItemState.MOVING, session_id="sess01", attempts=1)
    cancelled = session(SessionState.CANCELLED, code=SessionCode.CANCELLED, reason="cancelled by the operator")
    result = step(drain(before), {"sess01": cancelled}, ON_HOST, NOW, retry_delay=DELAY)
    why = "session sess01 was cancelled: cancelled by the operator"
    assert one(result) == item(state=ItemState.GAVE_UP, attempts=1, reason=why)
    assert result.events[0] == DrainGaveUp(host="hv1", vm="g1", attempts=1, reason=why)
    assert result.start == []


@pytest.mark.parametrize(
    "before",
    [
        item(),
        item(state=ItemState.RETRYING, attempts=1, retry_at=NOW + 100),
        item(state=ItemState.MOVING, session_id="sess09", attempts=1),  # the session record vanished
    ],
)
def test_a_vm_that_left_the_host_some_other_way_is_gone(before):
    result = step(drain(before), {}, {"other": (1, 512)}, NOW, retry_delay=DELAY)
    gone = result.drain.items[0]
    assert gone.state == ItemState.GONE and gone.reason == "g1 no longer runs on hv1"
    assert result.start == [StartSession(vm="other", hint=None, avoid=[], attempt=1)]  # and the newcomer starts


def test_a_vm_whose_session_record_vanished_starts_over():
    before = item(state=ItemState.QUEUED, session_id="sess09", attempts=1, dest="hv3")
    result = step(drain(before), {}, ON_HOST, NOW, retry_delay=DELAY)
    assert one(result) == item(state=ItemState.PLANNED, attempts=1, dest="hv3")
    assert result.start == [StartSession(vm="g1", hint="hv3", avoid=[], attempt=2)]


@pytest.mark.parametrize(
    "before, sessions",
    [
        (item(), {}),
        (item(state=ItemState.RETRYING, attempts=1, retry_at=NOW + 100), {}),
        (item(state=ItemState.MOVING, session_id="sess01", attempts=1),
         {"sess01": session(SessionState.FAILED, code="source_unreachable", reason="hv1 is lost")}),
        (item(state=ItemState.QUEUED, session_id="sess09", attempts=1), {}),
    ],
)
def test_on_a_lost_host_every_vm_not_being_moved_is_given_up(before, sessions):
    result = step(drain(before), sessions, None, NOW, retry_delay=DELAY)
    why = "hv1 is lost: its VMs cannot be live-migrated"
    after = one(result)
    assert after.state == ItemState.GAVE_UP and after.reason == why
    assert result.events[0] == DrainGaveUp(host="hv1", vm="g1", attempts=before.attempts, reason=why)
    assert result.start == []
    assert result.drain.state == DrainState.DONE


def test_on_a_lost_host_sessions_still_running_and_finished_moves_are_kept():
    items = [
        item("g1", state=ItemState.MOVING, session_id="sess01", attempts=1),
        item("g2", state=ItemState.MOVING, session_id="sess02", attempts=1),
        item("g3", state=ItemState.MOVED, session_id="sess03", attempts=1, dest="hv2"),
    ]
    sessions = {"sess01": session(SessionState.MIGRATING, id="sess01"),
                "sess02": session(SessionState.COMPLETED, id="sess02", vm="g2", dest="hv4")}
    result = step(drain(*items), sessions, None, NOW, retry_delay=DELAY)
    assert [i.state for i in result.drain.items] == [ItemState.MOVING, ItemState.MOVED, ItemState.MOVED]
    assert result.drain.state == DrainState.RUNNING and result.events == []


def test_a_lost_host_adds_no_vms():
    result = step(drain(item(state=ItemState.MOVED)), {}, None, NOW, retry_delay=DELAY)
    assert [i.vm for i in result.drain.items] == ["g1"]


def test_vms_that_appear_during_the_drain_are_added_and_started():
    on_host = {"g1": (2, 1024), "new-b": (4, 4096), "new-a": (1, 512)}
    result = step(drain(item(state=ItemState.MOVING, session_id="sess01", attempts=1)),
                  {"sess01": session()}, on_host, NOW, retry_delay=DELAY)
    assert result.drain.items[1:] == [
        DrainItem(vm="new-a", vcpus=1, memory_mib=512, reason="appeared on the host during the drain"),
        DrainItem(vm="new-b", vcpus=4, memory_mib=4096, reason="appeared on the host during the drain"),
    ]
    assert result.start == [StartSession(vm="new-a", hint=None, avoid=[], attempt=1),
                            StartSession(vm="new-b", hint=None, avoid=[], attempt=1)]


def test_a_vm_that_was_already_moved_is_not_added_again_if_it_shows_up():
    result = step(drain(item(state=ItemState.MOVED, dest="hv2")), {}, ON_HOST, NOW, retry_delay=DELAY)
    assert one(result).state == ItemState.MOVED and result.start == []


@pytest.mark.parametrize("final", [ItemState.MOVED, ItemState.GAVE_UP, ItemState.GONE])
def test_final_items_are_not_touched(final):
    before = item(state=final, session_id="sess01", attempts=2, reason="kept")
    result = step(drain(before, item("g2", state=ItemState.MOVING, session_id="sess02")),
                  {"sess01": session(SessionState.FAILED), "sess02": session(id="sess02", vm="g2")},
                  ON_HOST, NOW, retry_delay=DELAY)
    assert result.drain.items[0] == before


def test_the_drain_is_done_when_every_item_is_final():
    items = [
        item("g1", state=ItemState.MOVING, session_id="sess01", attempts=1),
        item("g2", state=ItemState.GAVE_UP, attempts=3),
        item("g3", state=ItemState.GONE),
        item("g4", state=ItemState.MOVED, dest="hv3"),
    ]
    sessions = {"sess01": session(SessionState.COMPLETED, dest="hv2")}
    result = step(drain(*items), sessions, {}, NOW, retry_delay=DELAY)
    assert result.drain.state == DrainState.DONE
    assert result.drain.finished_at == NOW and result.drain.updated_at == NOW
    assert result.events == [DrainFinished(host="hv1", moved=2, gave_up=1, gone=1)]


def test_the_drain_runs_on_while_any_item_is_not_final():
    items = [item("g1", state=ItemState.MOVED), item("g2", state=ItemState.RETRYING, attempts=1, retry_at=NOW + 5)]
    result = step(drain(*items), {}, {"g2": (2, 1024)}, NOW, retry_delay=DELAY)
    assert result.drain.state == DrainState.RUNNING and result.drain.finished_at is None
    assert result.events == []


def test_a_drain_of_an_empty_host_is_done_at_once():
    result = step(drain(), {}, {}, NOW, retry_delay=DELAY)
    assert result.drain.state == DrainState.DONE
    assert result.events == [DrainFinished(host="hv1", moved=0, gave_up=0, gone=0)]


def test_the_finishing_step_reports_its_own_events_before_the_summary():
    before = item(state=ItemState.MOVING, session_id="sess01", attempts=3)
    failed = session(SessionState.FAILED, code="migration_failed", reason="boom")
    result = step(drain(before), {"sess01": failed}, ON_HOST, NOW, retry_delay=DELAY)
    assert [type(e) for e in result.events] == [DrainGaveUp, DrainFinished]
    assert result.events[1] == DrainFinished(host="hv1", moved=0, gave_up=1, gone=0)


# started, not_started, new_drain


def test_started_counts_an_attempt_and_follows_the_session():
    before = item(state=ItemState.RETRYING, attempts=1, failed_on=["hv2"], dest=None)
    after = started(before, session(SessionState.QUEUED, id="sess07", dest="hv3"))
    assert after == item(state=ItemState.QUEUED, session_id="sess07", attempts=2, failed_on=["hv2"], dest="hv3")


def test_started_keeps_the_planned_destination_until_the_session_has_one():
    after = started(item(dest="hv4"), session(SessionState.QUEUED, dest=None))
    assert (after.state, after.dest, after.attempts) == (ItemState.QUEUED, "hv4", 1)


def test_a_session_that_could_not_be_created_is_tried_later_without_counting_an_attempt():
    before = item(attempts=1, dest="hv3")
    after = not_started(before, "g1 is already being moved by session abc123", NOW, DELAY)
    assert after == item(attempts=1, dest="hv3", reason="g1 is already being moved by session abc123",
                         retry_at=NOW + DELAY)
    assert step(drain(after), {}, ON_HOST, NOW + DELAY - 1, retry_delay=DELAY).start == []
    assert step(drain(after), {}, ON_HOST, NOW + DELAY, retry_delay=DELAY).start == [
        StartSession(vm="g1", hint="hv3", avoid=[], attempt=2)
    ]


def test_a_session_refused_for_a_reason_of_its_own_counts_and_is_given_up_at_the_limit():
    before = item(attempts=2, dest="hv3")
    after = not_started(before, "g1 is not running (known on hv1)", NOW, DELAY, counts=True)
    assert after.attempts == 3 and after.reason == "g1 is not running (known on hv1)"
    result = step(drain(after), {}, ON_HOST, NOW + DELAY, retry_delay=DELAY)
    assert one(result).state == ItemState.GAVE_UP and result.start == []
    assert one(result).reason == "gave up after 3 attempts; last: g1 is not running (known on hv1)"


def test_new_drain_makes_one_planned_item_per_move():
    moves = [PlannedMove("g1", "hv2"), PlannedMove("g2", None, "no host can take g2: …"), PlannedMove("g3", "hv3")]
    made = new_drain("hv1", moves, {"g1": (2, 1024), "g2": (8, 32768)}, NOW, reason="disk: full",
                     automatic=True, priority=50, max_attempts=4)
    assert made == Drain(
        host="hv1", state=DrainState.RUNNING, started_at=NOW, updated_at=NOW, reason="disk: full", automatic=True,
        priority=50, max_attempts=4,
        items=[
            DrainItem(vm="g1", dest="hv2", vcpus=2, memory_mib=1024),
            DrainItem(vm="g2", reason="no host can take g2: …", vcpus=8, memory_mib=32768),
            DrainItem(vm="g3", dest="hv3"),  # no size known: zero
        ],
    )


# A drain from start to finish


def test_a_drain_retries_elsewhere_and_finishes():
    moves = plan([vm("g1", 2048), vm("g2", 1024)], [host("hv1", draining=True), host("hv2"),
                                                    host("hv3", memory_used_mib=4096)])
    assert moves == [PlannedMove("g1", "hv2"), PlannedMove("g2", "hv2")]
    on_host = {"g1": (2, 2048), "g2": (2, 1024)}
    d = new_drain("hv1", moves, on_host, 0.0, reason="operator", automatic=False, priority=0, max_attempts=2)
    sessions: dict[str, Session] = {}

    def start_all(result, now):
        items = {i.vm: i for i in result.drain.items}
        for n, s in enumerate(result.start):
            sid = f"s{int(now):03d}{n}{s.vm}"
            sessions[sid] = session(SessionState.QUEUED, id=sid, vm=s.vm, dest=None)
            items[s.vm] = started(items[s.vm], sessions[sid])
        return Drain(**{**{f: getattr(result.drain, f) for f in result.drain.__struct_fields__},
                        "items": [items[i.vm] for i in result.drain.items]})

    # t=0: both start.
    r = step(d, sessions, on_host, 0.0, retry_delay=10.0)
    assert [s.hint for s in r.start] == ["hv2", "hv2"]
    d = start_all(r, 0.0)
    sid1, sid2 = (i.session_id for i in d.items)
    # t=5: g1's attempt fails on hv2; g2 completes there.
    sessions[sid1] = session(SessionState.FAILED, id=sid1, dest="hv2", code="migration_failed", reason="boom")
    sessions[sid2] = session(SessionState.COMPLETED, id=sid2, vm="g2", dest="hv2")
    r = step(d, sessions, {"g1": (2, 2048)}, 5.0, retry_delay=10.0)
    assert [i.state for i in r.drain.items] == [ItemState.RETRYING, ItemState.MOVED]
    assert r.drain.items[0].retry_at == 15.0 and r.start == []
    d = r.drain
    # t=10: still pausing. t=15: retried, avoiding hv2.
    assert step(d, sessions, {"g1": (2, 2048)}, 10.0, retry_delay=10.0).start == []
    r = step(d, sessions, {"g1": (2, 2048)}, 15.0, retry_delay=10.0)
    assert r.start == [StartSession(vm="g1", hint=None, avoid=["hv2"], attempt=2)]
    d = start_all(r, 15.0)
    sid3 = d.items[0].session_id
    assert d.items[0].attempts == 2
    # t=20: the second attempt fails too: max_attempts is 2, so g1 is given up and the drain is done.
    sessions[sid3] = session(SessionState.FAILED, id=sid3, dest="hv3", code="migration_failed", reason="again")
    r = step(d, sessions, {"g1": (2, 2048)}, 20.0, retry_delay=10.0)
    assert [i.state for i in r.drain.items] == [ItemState.GAVE_UP, ItemState.MOVED]
    assert r.drain.items[0].failed_on == ["hv2", "hv3"]
    assert r.drain.state == DrainState.DONE
    assert r.events[-1] == DrainFinished(host="hv1", moved=1, gave_up=1, gone=0)


def test_a_drain_is_not_done_while_a_vm_admitted_before_the_mark_is_still_arriving():
    moved = item(state=ItemState.MOVED, dest="hv2")
    waiting = step(drain(moved), {}, {}, NOW, retry_delay=DELAY, incoming=["late"])
    assert waiting.drain.state == DrainState.RUNNING and waiting.events == []
    arrived = step(waiting.drain, {}, {"late": (1, 512)}, NOW + 1, retry_delay=DELAY)
    assert [i.vm for i in arrived.drain.items] == ["g1", "late"]
    assert arrived.start == [StartSession(vm="late", hint=None, avoid=[], attempt=1)]


def test_a_lost_host_does_not_wait_for_vms_arriving():
    result = step(drain(item(state=ItemState.MOVED, dest="hv2")), {}, None, NOW, retry_delay=DELAY, incoming=["late"])
    assert result.drain.state == DrainState.DONE
