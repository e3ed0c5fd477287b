"""The drain benchmark's pure parts: who goes where, in which order, how many at once."""

import pytest

from bench.common import BenchError
from bench.drain import (
    Move,
    Side,
    admitted_span,
    baseline_plan,
    drain_record,
    landing_problems,
    peak_overlap,
    schedule,
)
from ferry.lab.residency import Residency
from ferry.proto.drain import DrainState, ItemState
from ferry.proto.session import MigrateOptions, Session, SessionState, Transition


def test_the_loop_sends_guests_to_the_targets_in_turn():
    assert baseline_plan(["a", "b", "c", "d", "e"], ("hv2", "hv3")) == [
        ("a", "hv2"), ("b", "hv3"), ("c", "hv2"), ("d", "hv3"), ("e", "hv2"),
    ]


def test_the_method_that_goes_first_alternates_by_round():
    assert schedule(3) == [(1, "virsh"), (1, "ferry"), (2, "ferry"), (2, "virsh"), (3, "virsh"), (3, "ferry")]


@pytest.mark.parametrize(
    "spans, peak",
    [
        ([], 0),
        ([(0.0, 2.0)], 1),
        ([(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)], 1),  # one ends as the next starts: never two
        ([(0.0, 3.0), (1.0, 4.0), (3.5, 5.0)], 2),
        ([(0.0, 5.0), (1.0, 4.0), (2.0, 3.0)], 3),
    ],
)
def test_peak_overlap(spans, peak):
    assert peak_overlap(spans) == peak


def test_a_side_reports_its_peak_and_the_sum_of_its_jobs():
    side = Side(1, "ferry", 9.0, (Move("a", "hv2", 0.1, 4.0, 3500), Move("b", "hv3", 0.2, 4.5, 4000), Move("c", "hv2", 4.0, 8.0, 3600)))
    assert side.peak_concurrent == 2
    assert side.job_s_sum == pytest.approx(11.1)
    assert Side(1, "virsh", 1.0, (Move("a", "hv2", 0.0, 1.0, None),)).job_s_sum is None


def session(*transitions: tuple[float, SessionState]) -> Session:
    return Session(
        id="s1", vm="a", source="hv1", options=MigrateOptions(), state=transitions[-1][1], created_at=100.0,
        updated_at=transitions[-1][0], history=[Transition(at, state) for at, state in transitions],
    )


def test_a_session_counts_from_admission_to_completion():
    S = SessionState
    assert admitted_span(session((100.0, S.QUEUED), (103.0, S.PREPARING), (103.5, S.MIGRATING), (107.0, S.COMPLETED))) == (103.0, 107.0)
    assert admitted_span(session((100.0, S.QUEUED), (101.0, S.PREPARING), (102.0, S.FAILED))) is None


def where(guest, running=(), active=(), defined=()) -> Residency:
    return Residency(guest, tuple(running), tuple(active), tuple(defined))


def test_a_guest_anywhere_but_alone_on_its_host_is_a_problem():
    residency = {
        "a": where("a", ["hv2"], ["hv2"], ["hv2"]),
        "b": where("b", [], [], ["hv1"]),  # lost: defined but running nowhere
        "c": where("c", ["hv3"], ["hv3", "hv1"], ["hv3"]),  # a paused copy left on hv1
        "d": where("d", ["hv2"], ["hv2"], ["hv2", "hv1"]),  # the source kept its definition
    }
    problems = landing_problems(residency, {"a": "hv2", "b": "hv3", "c": "hv3", "d": "hv2"})
    assert [p.split(" ")[0] for p in problems] == ["b", "c", "d"]
    assert all(p.endswith("alone)") for p in problems)


def test_the_drain_record_is_read_from_stdout():
    stdout = (
        '{\n  "host": "hv1",\n  "state": "done",\n  "started_at": 1.0,\n  "updated_at": 2.0,\n'
        '  "items": [{"vm": "a", "state": "moved", "dest": "hv2", "session_id": "abc123"}]\n}\n'
    )
    drain = drain_record(stdout)
    assert drain.state == DrainState.DONE
    assert [(i.vm, i.state, i.dest) for i in drain.items] == [("a", ItemState.MOVED, "hv2")]


@pytest.mark.parametrize("stdout", ["", "hv1 is draining\n", '{"host": "hv1"\n'])
def test_no_drain_record_is_a_bench_error(stdout):
    with pytest.raises(BenchError, match="no.*drain record"):
        drain_record(stdout)
