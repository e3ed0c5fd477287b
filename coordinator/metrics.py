"""The coordinator's /metrics: a snapshot of what it knows (hosts, the lease, the
sessions the leader drives), a pure mapping from that snapshot to metric
families, and the counters and histograms the leader feeds once per session
that ends.

Every coordinator reports hosts, NATS and whether it leads; only the leader
knows the sessions, so the session gauges come from the leader alone (a standby
shows none), and only the leader observes ends, so nothing is counted twice.
"""

from collections import OrderedDict
from collections.abc import Callable
from typing import Literal, Protocol

import msgspec
import structlog
from nats.aio.client import Client
from prometheus_client import Counter, Gauge, Histogram

from ferry.coordinator.leadership import Leadership
from ferry.coordinator.term import LeaderTerm
from ferry.proto.api import HostState, HostView
from ferry.proto.ha import Restart, RestartState
from ferry.proto.host import HealthState
from ferry.proto.session import Outcome, Session, SessionCode, SessionState
from ferry.runtime.metrics import (
    Family,
    RunningMigration,
    SnapshotMetrics,
    migration_families,
    nats_family,
)

# A guest notices a pause above a second; most live migrations stop it for tens of milliseconds.
DOWNTIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# From seconds (a small idle guest) to an hour (a large busy one with disks).
# A pass over 1,000 queued sessions is meant to take well under 50 ms.
ADMISSION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
DURATION_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# Session ids remembered so a session that ends twice (a `not_confirmed` one
# settled later) is counted once; far more than end within a term's memory.
ENDS_REMEMBERED = 10_000
# Sessions with a transfer to show: the source runs the job.
TRANSFERRING = (SessionState.MIGRATING, SessionState.POSTCOPY)


class HostSeen(msgspec.Struct, frozen=True):
    host: str
    state: HostState
    health: HealthState
    draining: bool = False
    heartbeat_age_seconds: float = 0.0


class SessionSeen(msgspec.Struct, frozen=True):
    state: SessionState
    migration: RunningMigration


class CoordinatorSnapshot(msgspec.Struct, frozen=True):
    coordinator: str
    leader: bool = False
    nats_connected: bool = False
    hosts: tuple[HostSeen, ...] = ()
    # Only the leader's term knows them; None on a standby.
    sessions: tuple[SessionSeen, ...] | None = None


class Ending(msgspec.Struct, frozen=True):
    """What one ended session adds to the counters and histograms."""

    result: Literal["succeeded", "failed", "cancelled"]
    code: str = ""
    downtime_seconds: float | None = None
    duration_seconds: float | None = None


def coordinator_families(snapshot: CoordinatorSnapshot) -> list[Family]:
    hosts = snapshot.hosts
    families = [
        Family(
            "ferry_coordinator_leader", "1 on the coordinator that holds the leader lease, 0 on a standby.",
            labels=("coordinator",), samples=(((snapshot.coordinator,), 1.0 if snapshot.leader else 0.0),),
        ),
        nats_family(snapshot.nats_connected),
        Family(
            "ferry_hosts", "Hosts by state (up or lost) and reported health.", labels=("state", "health"),
            # Every pair, zeros included: an alert on `lost` needs the series to exist before a host is lost.
            samples=tuple(
                ((str(state), str(health)), float(sum(1 for h in hosts if h.state == state and h.health == health)))
                for state in HostState
                for health in HealthState
            ),
        ),
        Family(
            "ferry_hosts_draining", "Hosts marked draining (no new VMs placed there).",
            samples=(((), float(sum(1 for h in hosts if h.draining))),),
        ),
        Family(
            "ferry_host_draining", "1 while the host is marked draining.", labels=("host",),
            samples=tuple(((h.host,), float(h.draining)) for h in sorted(hosts, key=lambda h: h.host)),
        ),
        Family(
            "ferry_host_heartbeat_age_seconds", "Seconds since the host's last heartbeat.", labels=("host",),
            samples=tuple(((h.host,), h.heartbeat_age_seconds) for h in sorted(hosts, key=lambda h: h.host)),
        ),
    ]
    if snapshot.sessions is None:
        return families
    sessions = snapshot.sessions
    return [
        *families,
        Family(
            "ferry_migrations", "Sessions in flight, by phase (the session state).", labels=("phase",),
            samples=tuple(
                ((str(state),), float(sum(1 for s in sessions if s.state == state)))
                for state in SessionState
                if not state.terminal
            ),
        ),
        Family(
            "ferry_migration_queue_depth", "Sessions queued, waiting for admission.",
            samples=(((), float(sum(1 for s in sessions if s.state == SessionState.QUEUED))),),
        ),
        *migration_families(s.migration for s in sessions if s.state in TRANSFERRING),
    ]


def ending(session: Session) -> Ending | None:
    """What an ended session counts as; None while it has not ended. Downtime is known
    only for a completed one; duration for any that reached the source's job. A 0 is
    "not known" (no statistics kept): QEMU never pauses a guest for no time at all."""
    if not session.state.terminal:
        return None
    outcome = session.outcome or Outcome()
    duration = outcome.total_time_ms / 1000 if outcome.total_time_ms else None
    if session.state == SessionState.COMPLETED:
        downtime = outcome.downtime_ms / 1000 if outcome.downtime_ms else None
        return Ending("succeeded", downtime_seconds=downtime, duration_seconds=duration)
    if session.state == SessionState.CANCELLED or session.code == SessionCode.CANCELLED:
        return Ending("cancelled", code=session.code or str(SessionCode.CANCELLED), duration_seconds=duration)
    return Ending("failed", code=session.code or "unknown", duration_seconds=duration)


def session_seen(session: Session) -> SessionSeen:
    return SessionSeen(
        state=session.state,
        migration=RunningMigration(
            session=session.id, vm=session.vm, source=session.source, dest=session.dest or "", progress=session.progress
        ),
    )


class Observed(Protocol):
    """What the snapshot reads of the coordinator (coordinator/daemon.py)."""

    name: str

    @property
    def term(self) -> LeaderTerm | None: ...
    @property
    def leadership(self) -> Leadership | None: ...
    @property
    def nc(self) -> Client: ...
    def views(self) -> list[HostView]: ...


def take_snapshot(coordinator: Observed) -> CoordinatorSnapshot:
    """On the event loop: copies of what the coordinator holds now."""
    term = coordinator.term
    leadership = coordinator.leadership
    return CoordinatorSnapshot(
        coordinator=coordinator.name,
        leader=leadership is not None and leadership.leading,
        nats_connected=coordinator.nc.is_connected,
        hosts=tuple(
            HostSeen(v.host, v.state, v.health, draining=v.draining, heartbeat_age_seconds=v.last_seen_age)
            for v in coordinator.views()
        ),
        sessions=tuple(session_seen(s) for s in term.sessions.live_in_flight()) if term is not None else None,
    )


class CoordinatorMetrics(SnapshotMetrics[CoordinatorSnapshot]):
    """The registry of one coordinator, its /metrics server and the leader's counters."""

    def __init__(self, address: str, snapshot: Callable[[], CoordinatorSnapshot], coordinator: str) -> None:
        log = structlog.get_logger().bind(component="metrics", coordinator=coordinator)
        super().__init__(
            "coordinator", address, snapshot, CoordinatorSnapshot(coordinator=coordinator), coordinator_families, log
        )
        self._succeeded = Counter(
            "ferry_migration_succeeded", "Sessions that completed (counted by the leader).", registry=self.registry
        )
        self._failed = Counter(
            "ferry_migration_failed", "Sessions that failed, by reason code (counted by the leader).", ["code"],
            registry=self.registry,
        )
        self._cancelled = Counter(
            "ferry_migration_cancelled", "Sessions cancelled on request (counted by the leader).", registry=self.registry
        )
        self._downtime = Histogram(
            "ferry_migration_downtime_seconds", "How long completed migrations paused their guest.",
            buckets=DOWNTIME_BUCKETS, registry=self.registry,
        )
        self._duration = Histogram(
            "ferry_migration_duration_seconds", "How long migrations ran, from the source's job start to its end.",
            buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._restarted = Counter(
            "ferry_ha_restart_succeeded", "HA VMs of dead hosts running again elsewhere (counted by the leader).",
            registry=self.registry,
        )
        self._restart_failed = Counter(
            "ferry_ha_restart_failed", "HA restarts that failed, by reason code (counted by the leader).", ["code"],
            registry=self.registry,
        )
        self._restart_seconds = Histogram(
            "ferry_ha_restart_seconds", "From a host's last heartbeat to its HA VM running again elsewhere.",
            buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self._admission = Histogram(
            "ferry_admission_pass_seconds", "How long an admission pass took to decide (the leader's, with sessions queued).",
            buckets=ADMISSION_BUCKETS, registry=self.registry,
        )
        self._last_admission = Gauge(
            "ferry_admission_last_pass_seconds", "How long the last admission pass took to decide.", registry=self.registry
        )

    def restart_ended(self, restart: Restart) -> None:
        """The leader's hook for a restart session that ended (running or failed)."""
        if restart.state == RestartState.RUNNING:
            self._restarted.inc()
            if restart.seconds:
                self._restart_seconds.observe(restart.seconds)
        else:
            self._restart_failed.labels(code=restart.code or "unknown").inc()

    def admission_pass(self, seconds: float) -> None:
        """The leader's hook after each admission pass with sessions queued."""
        self._admission.observe(seconds)
        self._last_admission.set(seconds)

    def session_ended(self, session: Session) -> None:
        """The leader's hook for a session that reached a terminal state."""
        end = ending(session)
        if end is None or session.id in self._ended:
            return
        self._ended[session.id] = None
        while len(self._ended) > ENDS_REMEMBERED:
            self._ended.popitem(last=False)
        if end.result == "succeeded":
            self._succeeded.inc()
        elif end.result == "cancelled":
            self._cancelled.inc()
        else:
            self._failed.labels(code=end.code).inc()
        if end.downtime_seconds is not None:
            self._downtime.observe(end.downtime_seconds)
        if end.duration_seconds is not None:
            self._duration.observe(end.duration_seconds)
