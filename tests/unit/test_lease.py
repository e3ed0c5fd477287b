"""The leader lease's rules (coordinator/lease.py), as stories with literal times."""

import pytest

from ferry.coordinator.kv import WatchedBucket, cluster_size, replicas_for
from ferry.coordinator.lease import (
    NOTHING_SEEN,
    Claim,
    Renew,
    Seen,
    StepDown,
    Timing,
    Wait,
    decide,
    next_lease,
    observe,
)
from ferry.proto.leader import Lease

TIMING = Timing(renew_every=1.0, lease_seconds=4.0, step_down_after=2.5)
ME, OTHER = "me-1", "other-1"


def lease(instance: str, holder: str = "c", term: int = 3) -> Lease:
    return Lease(holder=holder, instance=instance, term=term, since=0.0, renewed_at=0.0, lease_seconds=4.0)


@pytest.mark.parametrize(
    ("story", "seen", "renewed", "now", "expected"),
    [
        ("just renewed: nothing to do", Seen(lease(ME), 7, 100.0), 100.0, 100.5, Wait()),
        ("a second since the last renewal: renew on the revision held", Seen(lease(ME), 7, 100.0), 100.0, 101.0, Renew(7)),
        ("renewals failing for 2.4 s: keep trying", Seen(lease(ME), 7, 100.0), 100.0, 102.4, Renew(7)),
        ("renewals failing for 2.5 s: step down", Seen(lease(ME), 7, 100.0), 100.0, 102.5, StepDown("could not renew the lease for 2.5 s")),
        ("someone else wrote the lease: step down now", Seen(lease(OTHER, "c2", 4), 8, 100.2), 100.0, 100.3, StepDown("c2 took the lease (term 4)")),
    ],
)
def test_a_leader(story, seen, renewed, now, expected):
    assert decide(ME, True, seen, renewed, now, TIMING) == expected


@pytest.mark.parametrize(
    ("story", "seen", "now", "expected"),
    [
        ("no lease at all: create it", NOTHING_SEEN, 5.0, Claim(0, "no coordinator held the lease")),
        ("the leader renews: wait", Seen(lease(OTHER, "c1"), 7, 100.0), 103.9, Wait()),
        (
            "no renewal seen for the lease's 4 s: take it over on that revision",
            Seen(lease(OTHER, "c1"), 7, 100.0),
            104.0,
            Claim(7, "c1's lease (term 3) lapsed: not renewed for 4.0 s"),
        ),
        (
            "the lease is still this process's own (it stepped down; nobody took it): take it back",
            Seen(lease(ME), 9, 100.0),
            100.1,
            Claim(9, "the lease was still this coordinator's"),
        ),
    ],
)
def test_a_standby(story, seen, now, expected):
    assert decide(ME, False, seen, None, now, TIMING) == expected


def test_a_leader_steps_down_before_any_standby_can_take_over():
    """The last renewal began at 100.0 and was written by 100.3; a standby sees it
    at 100.3 at the earliest. The leader stops by 102.5; the standby starts at 104.3."""
    seen_by_standby = Seen(lease(OTHER), 7, 100.3)
    for tick in range(0, 60):
        now = 100.0 + tick * 0.1
        standby_takes = isinstance(decide(ME, False, seen_by_standby, None, now, TIMING), Claim)
        leader_leads = not isinstance(decide(OTHER, True, Seen(lease(OTHER), 7, 100.3), 100.0, now, TIMING), StepDown)
        assert not (standby_takes and leader_leads), f"two leaders at {now:.1f}"


def test_the_clock_of_a_revision_starts_when_this_process_first_sees_it():
    first = observe(NOTHING_SEEN, lease(OTHER), 7, 10.0)
    assert first.since == 10.0
    assert observe(first, lease(OTHER), 7, 12.0).since == 10.0, "the same revision keeps its clock"
    assert observe(first, lease(OTHER), 8, 12.0).since == 12.0, "a renewal restarts it"


def test_a_claim_writes_the_next_term():
    taken = next_lease(lease(OTHER, "c1", 3), "c2", ME, 50.0, TIMING)
    assert (taken.holder, taken.instance, taken.term, taken.since, taken.lease_seconds) == ("c2", ME, 4, 50.0, 4.0)
    assert next_lease(None, "c1", ME, 1.0, TIMING).term == 1


@pytest.mark.parametrize(
    ("info", "configured", "replicas"),
    [
        ({"server_name": "n1"}, 0, 1),
        ({"cluster": "lab", "connect_urls": ["a:1", "b:1", "c:1"]}, 0, 3),
        ({"cluster": "lab", "connect_urls": ["a:1", "b:1", "c:1", "d:1", "e:1", "f:1", "g:1"]}, 0, 5),
        ({"cluster": "lab", "connect_urls": ["a:1", "b:1", "c:1"]}, 1, 1),
    ],
)
def test_buckets_keep_one_copy_per_server_of_the_cluster(info, configured, replicas):
    assert replicas_for(info, configured) == replicas
    assert cluster_size({"cluster": "lab", "connect_urls": []}) == 1


class _Store:
    """What WatchedBucket needs of a store when nothing is read."""

    class bucket:
        name = "test"


def test_watched_records_keep_the_newest_revision_and_remember_deletes():
    changed: list[str] = []
    watched = WatchedBucket(_Store(), on_change=changed.append)  # type: ignore[arg-type]
    watched.saw("hv1", "a", 5)
    watched.saw("hv1", "older", 4)
    assert watched.get("hv1") == ("a", 5), "a late older revision is ignored"
    watched.saw("hv1", None, 6)
    assert watched.get("hv1") is None
    watched.saw("hv1", "a", 5)
    assert watched.get("hv1") is None, "a put from before the delete does not bring it back"
    watched.saw("hv1", "b", 7)
    assert watched.get("hv1") == ("b", 7)
    assert changed == ["hv1", "hv1", "hv1"]
