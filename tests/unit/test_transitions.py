import itertools

import pytest

from ferry.coordinator.transitions import ALLOWED, advance, can_move
from ferry.proto.errors import FerryError
from ferry.proto.session import MigrateOptions, Session, SessionState

S = SessionState


def new_session(state=S.QUEUED) -> Session:
    return Session(id="abc123", vm="g1", source="hv1", options=MigrateOptions(), state=state,
                   created_at=1.0, updated_at=1.0)


def test_every_state_has_rules():
    assert set(ALLOWED) == set(SessionState)


@pytest.mark.parametrize("terminal", [S.COMPLETED, S.FAILED, S.CANCELLED])
def test_terminal_states_are_final(terminal):
    assert terminal.terminal
    for target in SessionState:
        assert not can_move(terminal, target)


@pytest.mark.parametrize(
    "path",
    [
        [S.PREPARING, S.MIGRATING, S.COMPLETED],
        [S.PREPARING, S.MIGRATING, S.POSTCOPY, S.COMPLETED],
        [S.PREPARING, S.PREPARING, S.MIGRATING, S.FAILED],
        [S.CANCELLED],
        [S.PREPARING, S.CANCELLED],
        [S.PREPARING, S.MIGRATING, S.CANCELLED],
    ],
)
def test_legal_paths(path):
    s = new_session()
    for i, state in enumerate(path):
        s = advance(s, state, at=2.0 + i)
    assert s.state == path[-1]
    assert [t.state for t in s.history] == path
    assert s.updated_at == 1.0 + len(path)


@pytest.mark.parametrize(
    "current, target",
    [(S.QUEUED, S.MIGRATING), (S.QUEUED, S.COMPLETED), (S.POSTCOPY, S.CANCELLED),
     (S.MIGRATING, S.PREPARING), (S.COMPLETED, S.FAILED), (S.CANCELLED, S.QUEUED)],
)
def test_illegal_moves_are_refused_with_a_sentence(current, target):
    with pytest.raises(FerryError) as caught:
        advance(new_session(current), target, at=5.0)
    assert caught.value.code == "conflict"
    assert caught.value.message == f"session abc123 is {current}; it cannot become {target}"


def test_failure_keeps_its_reason():
    s = advance(new_session(), S.PREPARING, at=2.0)
    s = advance(s, S.FAILED, at=3.0, code="no_capacity", reason="hv2 has 100 MiB free, the VM needs 256 MiB")
    assert (s.code, s.reason) == ("no_capacity", "hv2 has 100 MiB free, the VM needs 256 MiB")
    assert s.history[-1].code == "no_capacity"


def test_changes_are_applied_with_the_move():
    s = advance(new_session(), S.PREPARING, at=2.0, dest="hv2", candidates_tried=["hv2"])
    assert (s.dest, s.candidates_tried) == ("hv2", ["hv2"])


def test_no_state_can_reach_queued_again():
    assert not any(S.QUEUED in targets for targets in ALLOWED.values())
    assert all(not can_move(a, b) for a, b in itertools.product([S.POSTCOPY], [S.CANCELLED, S.PREPARING]))
