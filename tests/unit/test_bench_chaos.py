"""bench/chaos: the audit's verdicts and the table's sums. Pure."""

from bench.chaos import RoundResult, agrees, tally
from ferry.proto.session import MigrateOptions, Session, SessionCode, SessionState

S = SessionState


def ended(state: SessionState, code: str = "") -> Session:
    return Session(
        id="s1", vm="g", source="hv1", dest="hv2", options=MigrateOptions(), state=state,
        created_at=1.0, updated_at=2.0, code=code,
    )


def test_a_session_agrees_with_libvirt_only_where_its_outcome_puts_the_guest():
    assert agrees(ended(S.COMPLETED), ("hv2",))
    assert not agrees(ended(S.COMPLETED), ("hv1",))
    assert agrees(ended(S.FAILED, "migration_failed"), ("hv1",))
    assert agrees(ended(S.CANCELLED, "cancelled"), ("hv1",))
    assert not agrees(ended(S.FAILED, "migration_failed"), ("hv1", "hv2"))
    assert not agrees(ended(S.FAILED, SessionCode.NOT_CONFIRMED), ("hv1",)), "nobody could tell: never agreement"


def test_the_table_sums_rounds_per_fault_and_keeps_the_worst_time():
    rounds = [
        RoundResult("leader", 0, "moves", sessions=3, worst_seconds=4.5, takeover_seconds=4.4),
        RoundResult("leader", 1, "drain hv1", sessions=2, worst_seconds=9.0, leftover_claims=1, takeover_seconds=5.1),
        RoundResult("nats-node", 0, "moves", sessions=3, lost=1, worst_seconds=2.0, images_left=1),
    ]
    coordinator, nats_server = tally(rounds)
    assert (coordinator.fault, coordinator.rounds, coordinator.sessions, coordinator.leftovers) == ("leader", 2, 5, 1)
    assert coordinator.worst_seconds == 9.0 and coordinator.lost == 0
    assert coordinator.worst_takeover == 5.1 and nats_server.worst_takeover is None
    assert (nats_server.lost, nats_server.images_left) == (1, 1)
    assert not rounds[1].clean and not rounds[2].clean and rounds[0].clean
