from ferry.coordinator.session_history import admitted_spans, max_overlap
from ferry.proto.session import MigrateOptions, Session, SessionState, Transition

S = SessionState


def session(sid, source, *steps) -> Session:
    return Session(id=sid, vm=f"vm-{sid}", source=source, options=MigrateOptions(), state=steps[-1][1],
                   created_at=steps[0][0], updated_at=steps[-1][0],
                   history=[Transition(at=at, state=state) for at, state in steps])


def test_a_slot_is_held_from_admission_to_the_end_and_a_decline_keeps_it():
    s = session("a00001", "hv1", (0, S.QUEUED), (1, S.PREPARING), (2, S.PREPARING), (3, S.MIGRATING), (5, S.COMPLETED))
    assert admitted_spans(s) == [(1, 5)]


def test_going_back_to_the_queue_gives_the_slot_up():
    s = session("a00001", "hv1", (0, S.QUEUED), (1, S.PREPARING), (2, S.QUEUED), (4, S.PREPARING), (6, S.FAILED))
    assert admitted_spans(s) == [(1, 2), (4, 6)]


def test_a_session_still_running_holds_its_slot_open_ended():
    assert admitted_spans(session("a00001", "hv1", (0, S.QUEUED), (1, S.PREPARING))) == [(1, float("inf"))]


def test_a_session_never_admitted_held_nothing():
    assert admitted_spans(session("a00001", "hv1", (0, S.QUEUED), (1, S.CANCELLED))) == []


def test_the_most_at_once_per_key_and_a_handover_at_the_same_moment_is_not_two():
    sessions = [
        session("a00001", "hv1", (0, S.QUEUED), (1, S.PREPARING), (5, S.COMPLETED)),
        session("a00002", "hv1", (0, S.QUEUED), (2, S.PREPARING), (5, S.COMPLETED)),
        session("a00003", "hv1", (0, S.QUEUED), (5, S.PREPARING), (8, S.COMPLETED)),
        session("a00004", "hv2", (0, S.QUEUED), (3, S.PREPARING), (4, S.COMPLETED)),
    ]
    assert max_overlap(sessions, key=lambda s: s.source) == {"hv1": 2, "hv2": 1}
    assert max_overlap(sessions, key=lambda s: "cluster") == {"cluster": 3}
