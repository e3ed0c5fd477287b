"""What a destination has promised to incoming migrations. Pure.

A reservation holds memory and vCPUs for one session. It carries a lease: if
the migration has not started when the lease ends, the reservation lapses and
the destination removes what it prepared. Once the incoming domain exists the
lease is renewed for as long as the migration runs. The book lives in memory;
agent/destination.py journals each reservation and holds it again after a restart.
"""

from dataclasses import dataclass, field, replace

from ferry.proto.agent import Offer, VmDescription


@dataclass(frozen=True)
class Reservation:
    session_id: str
    vm: str
    description: VmDescription
    memory_mib: int
    vcpus: int
    expires_at: float
    offer: Offer
    # Images this host created for storage copy (domain paths): removed on rollback.
    created_disks: tuple[str, ...] = ()


@dataclass
class ReservationBook:
    _by_session: dict[str, Reservation] = field(default_factory=dict)

    def get(self, session_id: str) -> Reservation | None:
        return self._by_session.get(session_id)

    def all(self) -> list[Reservation]:
        return list(self._by_session.values())

    def for_vm(self, vm: str) -> Reservation | None:
        return next((r for r in self._by_session.values() if r.vm == vm), None)

    def hold(self, reservation: Reservation) -> None:
        self._by_session[reservation.session_id] = reservation

    def renew(self, session_id: str, expires_at: float) -> None:
        current = self._by_session.get(session_id)
        if current is not None:
            self._by_session[session_id] = replace(current, expires_at=expires_at)

    def release(self, session_id: str) -> Reservation | None:
        return self._by_session.pop(session_id, None)

    def lapsed(self, now: float) -> list[Reservation]:
        return [r for r in self._by_session.values() if r.expires_at <= now]

    @property
    def memory_mib(self) -> int:
        return sum(r.memory_mib for r in self._by_session.values())

    @property
    def vcpus(self) -> int:
        return sum(r.vcpus for r in self._by_session.values())

    def __len__(self) -> int:
        return len(self._by_session)
