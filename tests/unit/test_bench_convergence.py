"""The convergence benchmark's pure parts: how an attempt ended, what Ferry's
session says, the summary and its ratio; and that results survive a new run."""

from pathlib import Path

import msgspec
import pytest

from bench.common import BenchError, clear_old_lab
from bench.convergence import (
    Attempt,
    action_counts,
    alone_on,
    ferry_end,
    last_progress,
    lever_peaks,
    schedule,
    session_record,
    summarize,
    total_time_ratio,
    virsh_end,
)
from ferry.lab.residency import Residency
from ferry.lab.state import LabState, save_state
from ferry.proto.convergence import ActionKind, PolicyAction
from ferry.proto.progress import Progress
from ferry.proto.session import MigrateOptions, Outcome, Session, SessionState


def test_the_method_that_goes_first_alternates_by_round():
    assert schedule(3) == [(1, "virsh"), (1, "ferry"), (2, "ferry"), (2, "virsh"), (3, "virsh"), (3, "ferry")]


@pytest.mark.parametrize(
    "returncode, aborted, end",
    [
        (0, False, "completed"),
        (0, True, "completed"),  # finished as the deadline came: the abort found no job
        (1, True, "aborted at the deadline"),
    ],
)
def test_how_a_virsh_attempt_ended(returncode, aborted, end):
    assert virsh_end(returncode, aborted, "error: operation aborted") == end


def test_virsh_failing_before_the_deadline_is_a_bench_error():
    with pytest.raises(BenchError, match="failed before the deadline, with exit status 1: error: no route"):
        virsh_end(1, False, "error: no route")


def busy_session(state: SessionState, steering: list[PolicyAction], **extra) -> Session:
    return Session(
        id="abc123", vm="busy-1", source="hv1", dest="hv2", options=MigrateOptions(bandwidth_mib=16),
        state=state, created_at=100.0, updated_at=160.0, steering=steering, **extra,
    )


def action(kind: ActionKind, iteration: int | None = None) -> PolicyAction:
    sample = None if iteration is None else Progress(iteration=iteration, data_processed=iteration * 100)
    return PolicyAction(kind, reason="r", sample=sample)


STEERING = [
    action(ActionKind.SET_DOWNTIME, 2),
    action(ActionKind.SET_DOWNTIME, 3),
    action(ActionKind.AUTO_CONVERGE_ENGAGED, 4),
    action(ActionKind.SET_DOWNTIME, 5),
]


def test_the_policy_actions_are_counted_by_kind_in_order_of_first_use():
    assert action_counts(busy_session(SessionState.COMPLETED, STEERING)) == {"set_downtime": 3, "auto_converge_engaged": 1}
    assert action_counts(busy_session(SessionState.COMPLETED, [])) == {}


def test_the_last_sample_is_the_progress_else_the_last_action_sample():
    assert last_progress(busy_session(SessionState.COMPLETED, STEERING)).iteration == 5
    assert last_progress(busy_session(SessionState.COMPLETED, STEERING, progress=Progress(iteration=9))).iteration == 9
    assert last_progress(busy_session(SessionState.FAILED, [action(ActionKind.ABORT)])) is None


def test_the_session_is_read_from_stdout_and_says_how_it_ended():
    printed = msgspec.json.format(
        msgspec.json.encode(busy_session(SessionState.COMPLETED, STEERING, outcome=Outcome(58_000, 240, 900_000_000)))
    ).decode()
    session = session_record(printed + "\n")
    assert session.outcome == Outcome(58_000, 240, 900_000_000)
    assert ferry_end(session) == "completed"
    failed = busy_session(SessionState.FAILED, [action(ActionKind.ABORT, 12)], code="not_converging", reason="the default policy aborted it: not done")
    assert ferry_end(failed) == "failed (not_converging): the default policy aborted it: not done"


@pytest.mark.parametrize("stdout", ["", "Error: no such vm\n", '{"id": "s1"'])
def test_no_session_is_a_bench_error(stdout):
    with pytest.raises(BenchError, match="no valid session"):
        session_record(stdout)


@pytest.mark.parametrize(
    "running, active, defined, host",
    [
        (["hv1"], ["hv1"], ["hv1"], "hv1"),
        (["hv1"], ["hv1", "hv2"], ["hv1"], None),  # an aborted incoming copy still on hv2
        (["hv2"], ["hv2"], ["hv2", "hv1"], None),  # the source kept its definition
        ([], [], ["hv1"], None),  # lost
        (["hv1", "hv2"], ["hv1", "hv2"], ["hv1", "hv2"], None),  # runs twice
    ],
)
def test_the_guest_must_be_alone_on_one_host(running, active, defined, host):
    assert alone_on(Residency("busy-1", tuple(running), tuple(active), tuple(defined))) == host


def attempt(method: str, completed: bool, total_s: float, downtime_ms: float | None = None, round: int = 1) -> Attempt:
    return Attempt(round, method, completed, total_s, "completed" if completed else "gave up", "hv2" if completed else "hv1", downtime_ms)


@pytest.mark.parametrize(
    "virsh, ferry, expected",
    [
        ([attempt("virsh", True, 40.0)], [attempt("ferry", True, 50.0)], (1.25, "")),
        ([attempt("virsh", False, 120.4)], [attempt("ferry", True, 55.0)], (None, "virsh did not complete")),
        ([attempt("virsh", True, 40.0)], [attempt("ferry", False, 121.0)], (None, "ferry did not complete")),
        ([attempt("virsh", False, 120.4)], [attempt("ferry", False, 121.0)], (None, "neither completed")),
        ([], [], (None, "neither completed")),
    ],
)
def test_the_total_time_ratio_needs_both_to_complete(virsh, ferry, expected):
    assert total_time_ratio(virsh, ferry) == expected


def test_the_summary_counts_completions_and_takes_times_of_completed_attempts_only():
    attempts = [
        attempt("virsh", False, 120.5),
        attempt("ferry", True, 56.0, 240.0),
        attempt("ferry", True, 60.0, 300.0, round=2),
        attempt("virsh", True, 90.0, 100.0, round=2),
    ]
    summary = summarize(attempts)
    v, f = summary["methods"]["virsh"], summary["methods"]["ferry"]
    assert (v["attempts"], v["completed"], f["attempts"], f["completed"]) == (2, 1, 2, 2)
    assert v["total_s_median"] == pytest.approx(105.25) and v["completed_total_s_median"] == 90.0
    assert v["downtime_ms_median"] == 100.0 and f["downtime_ms_median"] == 270.0
    assert summary["ratio_total_time"] == pytest.approx(58.0 / 90.0) and summary["ratio_note"] == ""
    none = summarize([attempt("virsh", False, 120.5), attempt("ferry", True, 56.0, 240.0)])
    assert none["ratio_total_time"] is None and none["ratio_note"] == "virsh did not complete"
    assert none["methods"]["virsh"]["completed_total_s_median"] is None


def test_clearing_an_old_lab_keeps_the_results_of_earlier_benchmarks(tmp_path: Path):
    lab = tmp_path / "bench"
    (lab / "hv1" / "run").mkdir(parents=True)
    (lab / "nats-server.log").write_text("old\n")
    save_state(lab / "lab.json", LabState(dir=str(lab), hosts=2, address_base="127.0.99", cache_dir=str(tmp_path)))
    for name in ("overhead.json", "drain.json"):
        (lab / name).write_text("{}\n")
    clear_old_lab(lab)
    assert sorted(p.name for p in lab.iterdir()) == ["drain.json", "overhead.json"]
    # A folder with only results is no stray folder: clearing it again keeps them.
    clear_old_lab(lab)
    assert sorted(p.name for p in lab.iterdir()) == ["drain.json", "overhead.json"]


def test_a_folder_with_other_files_but_no_lab_is_left_alone(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "drain.json").write_text("{}\n")
    with pytest.raises(BenchError, match="holds files but no lab"):
        clear_old_lab(tmp_path)
    assert (tmp_path / "notes.txt").exists()



def test_the_levers_peaks_are_the_highest_values_the_policy_and_qemu_reached():
    steering = [
        PolicyAction(ActionKind.SET_DOWNTIME, "r", value=50),
        PolicyAction(ActionKind.AUTO_CONVERGE_ENGAGED, "r", value=30),
        PolicyAction(ActionKind.SET_DOWNTIME, "r", value=300),
        PolicyAction(ActionKind.AUTO_CONVERGE_ENGAGED, "r", value=90),
        PolicyAction(ActionKind.SET_DOWNTIME, "r", value=250),
    ]
    assert lever_peaks(busy_session(SessionState.COMPLETED, steering)) == (300, 90)
    assert lever_peaks(busy_session(SessionState.FAILED, [PolicyAction(ActionKind.ABORT, "r")])) == (None, None)
