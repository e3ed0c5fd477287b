import pytest

from ferry.agent.reservations import Reservation, ReservationBook
from ferry.proto.agent import Offer, VmDescription


def reservation(session_id="sess01", vm="g1", memory_mib=1024, vcpus=2, expires_at=100.0, **kw) -> Reservation:
    return Reservation(
        session_id=session_id,
        vm=vm,
        description=VmDescription(name=vm, uuid=f"u-{vm}", vcpus=vcpus, memory_mib=memory_mib),
        memory_mib=memory_mib,
        vcpus=vcpus,
        expires_at=expires_at,
        offer=Offer(session_id=session_id, host="hv2", peer_uri="qemu+tls://hv2/system", lease_expires_at=expires_at),
        **kw,
    )


def book_of(*reservations: Reservation) -> ReservationBook:
    book = ReservationBook()
    for r in reservations:
        book.hold(r)
    return book


def test_an_empty_book_holds_nothing():
    book = ReservationBook()
    assert len(book) == 0 and book.memory_mib == 0 and book.vcpus == 0
    assert book.get("sess01") is None and book.for_vm("g1") is None and book.lapsed(1e9) == []


def test_a_held_reservation_is_found_by_session_and_by_vm():
    r = reservation()
    book = book_of(r)
    assert book.get("sess01") is r
    assert book.for_vm("g1") is r
    assert book.get("other1") is None and book.for_vm("g2") is None


def test_books_do_not_share_reservations():
    book_of(reservation())
    assert len(ReservationBook()) == 0


def test_holding_the_same_session_again_replaces_it():
    book = book_of(reservation(memory_mib=1024), reservation(memory_mib=2048))
    assert len(book) == 1 and book.memory_mib == 2048


def test_totals_add_every_reservation():
    book = book_of(reservation("sess01", "g1", 1024, 2), reservation("sess02", "g2", 512, 1),
                   reservation("sess03", "g3", 4096, 8))
    assert len(book) == 3 and book.memory_mib == 5632 and book.vcpus == 11


def test_renew_moves_only_the_expiry():
    r = reservation(expires_at=100.0, created_disks=("/img/g1.qcow2",))
    book = book_of(r)
    book.renew("sess01", 160.0)
    renewed = book.get("sess01")
    assert renewed.expires_at == 160.0
    assert (renewed.vm, renewed.memory_mib, renewed.vcpus, renewed.offer, renewed.created_disks) == (
        "g1", 1024, 2, r.offer, ("/img/g1.qcow2",))
    assert r.expires_at == 100.0  # the original record is frozen, not changed in place


def test_renewing_an_unknown_session_holds_nothing():
    book = ReservationBook()
    book.renew("sess01", 160.0)
    assert len(book) == 0 and book.get("sess01") is None


def test_release_returns_the_reservation_once():
    r = reservation()
    book = book_of(r, reservation("sess02", "g2", 512, 1))
    assert book.release("sess01") is r
    assert book.release("sess01") is None
    assert book.get("sess01") is None and book.for_vm("g1") is None
    assert len(book) == 1 and book.memory_mib == 512 and book.vcpus == 1


@pytest.mark.parametrize(
    "now, lapsed",
    [(99.9, []), (100.0, ["sess01"]), (150.0, ["sess01"]), (200.0, ["sess01", "sess02"])],
)
def test_a_reservation_lapses_when_its_lease_ends(now, lapsed):
    book = book_of(reservation("sess01", "g1", expires_at=100.0), reservation("sess02", "g2", expires_at=200.0))
    assert sorted(r.session_id for r in book.lapsed(now)) == lapsed


def test_lapsed_does_not_remove_anything():
    book = book_of(reservation(expires_at=100.0))
    book.lapsed(500.0)
    assert len(book) == 1


def test_a_renewed_reservation_no_longer_lapses_at_the_old_time():
    book = book_of(reservation(expires_at=100.0))
    book.renew("sess01", 300.0)
    assert book.lapsed(150.0) == []
    assert [r.session_id for r in book.lapsed(300.0)] == ["sess01"]
