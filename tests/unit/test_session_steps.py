"""session_steps: the reconciler's decision for every (state, what the agents say) pair."""

import msgspec
import pytest

from ferry.coordinator import session_steps as steps
from ferry.coordinator.session_steps import SILENT, HostSide, Observed, deadline, step
from ferry.proto.agent import JobReport, JobRole, Offer, SessionResult
from ferry.proto.host import VmState
from ferry.proto.session import Demand, MigrateOptions, Session, SessionCode, SessionState, Transition

S = SessionState
T0 = 1_000_000.0
OFFER = Offer(session_id="s1", host="hv2", peer_uri="qemu+tls://hv2/system")


def session(state: SessionState, *, at: float = T0, **changes) -> Session:
    record = Session(
        id="s1", vm="web.1", source="hv1", dest="hv2", options=MigrateOptions(), state=state,
        created_at=T0, updated_at=at, history=[Transition(at=at, state=state)],
        demand=Demand(vcpus=1, memory_mib=256),
    )
    return msgspec.structs.replace(record, **changes)


def result(ok: bool, *, aborted: bool = False, code: str = "", at: float = T0 + 10) -> SessionResult:
    return SessionResult(session_id="s1", vm="web.1", host="hv1", at=at, ok=ok, aborted=aborted, code=code, reason="why")


def source(*, job: str | None = None, vm: VmState | None = VmState.RUNNING, res: SessionResult | None = None) -> HostSide:
    """job: None (never heard of it), "running", "settling" (started, no job, no result yet), "done"."""
    report = None
    if job is not None:
        report = JobReport(
            session_id="s1", vm="web.1", role=JobRole.SOURCE, started=True,
            job_running=job == "running", result=res,
        )
    return HostSide(answered=True, job=report, vm_state=vm)


def dest(*, offer: bool = False, vm: VmState | None = None, incoming: bool = False) -> HostSide:
    report = None
    if offer or incoming:
        report = JobReport(
            session_id="s1", vm="web.1", role=JobRole.DESTINATION, job_running=incoming, offer=OFFER if offer else None,
        )
    return HostSide(answered=True, job=report, vm_state=vm)


def seen(src: HostSide, dst: HostSide, *, now: float = T0 + 1, caught: SessionResult | None = None) -> Observed:
    return Observed(source=src, dest=dst, now=now, result=caught)


LATE = T0 + 10_000


# ----- queued -----


def test_queued_is_admissions_business_until_its_deadline():
    assert step(session(S.QUEUED), seen(SILENT, SILENT)) == steps.Nothing()
    expired = step(session(S.QUEUED), seen(SILENT, SILENT, now=T0 + steps.QUEUED_SECONDS))
    assert isinstance(expired, steps.Expire) and "web.1" in expired.reason


@pytest.mark.parametrize("state", [S.COMPLETED, S.FAILED, S.CANCELLED])
def test_ended_sessions_need_nothing(state):
    assert step(session(state), seen(source(), dest())) == steps.Nothing()


# ----- preparing -----


@pytest.mark.parametrize(
    "dst",
    [dest(), SILENT, dest(vm=VmState.PAUSED)],
    ids=["nothing held", "destination silent", "stray domain"],
)
def test_preparing_without_a_reservation_prepares(dst):
    assert step(session(S.PREPARING), seen(source(), dst)) == steps.Prepare()


def test_preparing_with_a_reservation_held_starts_the_migration():
    assert step(session(S.PREPARING), seen(source(), dest(offer=True))) == steps.StartMigration(OFFER)


def test_preparing_with_the_source_silent_prepares_again_rather_than_start_blind():
    assert step(session(S.PREPARING), seen(SILENT, dest(offer=True))) == steps.Prepare()


@pytest.mark.parametrize("job", ["running", "settling", "done"])
def test_preparing_while_the_source_already_took_the_job_catches_up(job):
    res = result(True) if job == "done" else None
    assert step(session(S.PREPARING), seen(source(job=job, res=res), dest(offer=True))) == steps.MarkMigrating()


def test_preparing_past_its_deadline_rolls_back_with_the_vm_on_its_source():
    late = step(session(S.PREPARING), seen(source(), SILENT, now=T0 + steps.PREPARING_SECONDS))
    assert isinstance(late, steps.RollBack)
    assert late.state == S.FAILED and late.code == SessionCode.TIMED_OUT and "stays on hv1" in late.reason


# ----- migrating -----


def test_a_running_job_is_followed():
    assert step(session(S.MIGRATING), seen(source(job="running"), dest(offer=True, vm=VmState.PAUSED, incoming=True))) == steps.Follow()


def test_a_cancel_requested_is_repeated_while_the_job_runs():
    s = session(S.MIGRATING, cancel_requested=True)
    assert step(s, seen(source(job="running"), dest(incoming=True))) == steps.Follow(abort="cancelled on request")


def test_a_job_running_past_the_deadline_is_aborted_at_the_source():
    got = step(session(S.MIGRATING), seen(source(job="running"), dest(incoming=True), now=LATE))
    assert isinstance(got, steps.Follow) and "deadline" in got.abort


def test_a_successful_result_commits():
    ok = result(True)
    assert step(session(S.MIGRATING), seen(source(job="done", vm=None, res=ok), dest(vm=VmState.RUNNING))) == steps.Commit(ok)


def test_a_result_caught_on_the_subject_counts_as_well():
    ok = result(True)
    assert step(session(S.MIGRATING), seen(SILENT, dest(vm=VmState.RUNNING), caught=ok)) == steps.Commit(ok)


def test_success_with_the_destination_silent_still_tries_to_commit():
    ok = result(True)
    assert step(session(S.MIGRATING), seen(source(job="done", vm=None, res=ok), SILENT)) == steps.Commit(ok)


def test_success_reported_but_the_vm_still_runs_on_the_source_only_is_rolled_back():
    ok = result(True)
    got = step(session(S.MIGRATING), seen(source(job="done", res=ok), dest()))
    assert isinstance(got, steps.RollBack) and got.code == SessionCode.NOT_CONFIRMED and "still runs there" in got.reason


def test_success_while_the_destination_does_not_show_the_vm_yet_commits_until_the_window_closes():
    ok = result(True, at=T0 + 10)
    waiting = step(session(S.MIGRATING), seen(source(job="done", vm=None, res=ok), dest(vm=VmState.PAUSED)))
    assert waiting == steps.Commit(ok)
    later = step(
        session(S.MIGRATING),
        seen(source(job="done", vm=None, res=ok), dest(vm=VmState.PAUSED), now=ok.at + steps.COMMIT_SECONDS),
    )
    assert isinstance(later, steps.NotConfirmed)


def test_a_failed_job_rolls_back_with_its_code():
    bad = result(False, code="migration_failed")
    got = step(session(S.MIGRATING), seen(source(job="done", res=bad), dest(offer=True, vm=VmState.PAUSED)))
    assert got == steps.RollBack(S.FAILED, "migration_failed", "why", bad)


def test_an_aborted_job_ends_cancelled():
    aborted = result(False, aborted=True, code="cancelled")
    got = step(session(S.MIGRATING, cancel_requested=True), seen(source(job="done", res=aborted), dest(offer=True)))
    assert isinstance(got, steps.RollBack) and got.state == S.CANCELLED


def test_an_error_after_the_switch_over_commits_where_the_guest_runs():
    bad = result(False, code="migration_failed")
    got = step(session(S.MIGRATING), seen(source(job="done", vm=None, res=bad), dest(vm=VmState.RUNNING)))
    assert got == steps.Commit(bad)


def test_a_job_that_finished_while_nobody_watched_commits_from_where_the_vm_runs():
    # The source's agent lost its record (or never sent the result), the guest runs on the destination.
    assert step(session(S.MIGRATING), seen(source(vm=None), dest(vm=VmState.RUNNING))) == steps.Commit()


def test_the_source_silent_and_the_guest_running_on_the_destination_commits():
    assert step(session(S.MIGRATING), seen(SILENT, dest(vm=VmState.RUNNING))) == steps.Commit()


def test_a_source_that_never_took_the_request_is_asked_again_while_the_reservation_holds():
    assert step(session(S.MIGRATING), seen(source(), dest(offer=True))) == steps.StartMigration(OFFER)


def test_a_source_that_never_took_the_request_and_no_reservation_fails_cleanly():
    got = step(session(S.MIGRATING), seen(source(), dest()))
    assert isinstance(got, steps.RollBack) and got.state == S.FAILED and "never started" in got.reason


def test_a_source_settling_its_job_after_a_restart_is_given_time():
    assert isinstance(step(session(S.MIGRATING), seen(source(job="settling"), dest(incoming=True))), steps.Retry)


def test_a_source_that_never_settles_is_judged_by_where_the_guest_runs_at_the_deadline():
    arrived = step(session(S.MIGRATING), seen(source(job="settling", vm=None), dest(vm=VmState.RUNNING), now=LATE))
    assert arrived == steps.Commit()
    stayed = step(session(S.MIGRATING), seen(source(job="settling"), dest(offer=True), now=LATE))
    assert isinstance(stayed, steps.RollBack), "never asked to start again: the source took the request once"


@pytest.mark.parametrize(
    "src, dst",
    [(SILENT, SILENT), (SILENT, dest(vm=VmState.PAUSED, incoming=True)), (source(), SILENT)],
    ids=["both silent", "source silent mid-job", "destination silent"],
)
def test_silence_before_the_deadline_retries(src, dst):
    got = step(session(S.MIGRATING), seen(src, dst))
    assert isinstance(got, steps.Retry) and "did not answer" in got.reason


def test_silence_past_the_deadline_is_not_confirmed_and_names_what_each_host_said():
    got = step(session(S.MIGRATING), seen(SILENT, dest(vm=VmState.PAUSED, incoming=True), now=LATE))
    assert isinstance(got, steps.NotConfirmed)
    assert "hv1 does not answer" in got.reason and "hv2 has it paused" in got.reason


def test_a_silent_source_past_the_deadline_with_no_incoming_domain_rolls_back():
    got = step(session(S.MIGRATING), seen(SILENT, dest(offer=True), now=LATE))
    assert isinstance(got, steps.RollBack) and got.code == SessionCode.SOURCE_UNREACHABLE


# ----- post-copy -----


def test_post_copy_is_never_cancelled():
    s = session(S.POSTCOPY, cancel_requested=True)
    assert step(s, seen(source(job="running"), dest(vm=VmState.RUNNING, incoming=True))) == steps.Follow()


def test_post_copy_with_the_source_silent_waits_even_if_the_guest_runs_on_the_destination():
    assert isinstance(step(session(S.POSTCOPY), seen(SILENT, dest(vm=VmState.RUNNING))), steps.Retry)


def test_a_failed_post_copy_touches_nothing():
    bad = result(False, code="migration_failed")
    got = step(session(S.POSTCOPY), seen(source(job="done", vm=VmState.PAUSED, res=bad), dest(vm=VmState.PAUSED)))
    assert isinstance(got, steps.NotConfirmed) and "nothing was removed" in got.reason


# ----- deadlines and settling -----


def test_every_state_has_a_deadline_and_ended_ones_have_none():
    for state in (S.QUEUED, S.PREPARING, S.MIGRATING, S.POSTCOPY):
        assert deadline(session(state)) < float("inf")
    assert deadline(session(S.COMPLETED)) == float("inf")


def test_the_migrating_deadline_grows_with_the_guest():
    small = deadline(session(S.MIGRATING, demand=Demand(memory_mib=256)))
    big = deadline(session(S.MIGRATING, demand=Demand(memory_mib=64 * 1024)))
    assert big > small >= T0 + 120


def test_an_unconfirmed_session_settles_when_a_host_can_tell():
    s = session(S.FAILED, code=SessionCode.NOT_CONFIRMED)
    assert steps.settle_unconfirmed(s, seen(source(vm=None), dest(vm=VmState.RUNNING))) == steps.Commit()
    back = steps.settle_unconfirmed(s, seen(source(), dest()))
    assert isinstance(back, steps.RollBack) and "runs on hv1" in back.reason
    assert steps.settle_unconfirmed(s, seen(SILENT, SILENT)) == steps.Nothing()
    assert steps.settle_unconfirmed(session(S.FAILED, code="migration_failed"), seen(source(), dest())) == steps.Nothing()
