"""The agent's /metrics: a snapshot of the host as the agent sees it (NATS,
libvirt, VMs, health, the migrations it sends with their last progress sample),
a pure mapping from that snapshot to metric families, and the shell that serves
them from the agent's own registry."""

from collections.abc import Callable

import msgspec
import structlog

from ferry.proto.host import HealthCheck, HealthState
from ferry.runtime.metrics import (
    Family,
    RunningMigration,
    SnapshotMetrics,
    migration_families,
    nats_family,
)

# The built-in check that says whether the hypervisor (libvirt) answers (agent/health.py).
HYPERVISOR_CHECK = "hypervisor"


class AgentSnapshot(msgspec.Struct, frozen=True):
    host: str
    nats_connected: bool = False
    checks: tuple[HealthCheck, ...] = ()
    running_vms: int = 0
    heartbeats_sent: int = 0
    # Reservations held for incoming VMs (this host as a destination).
    incoming: int = 0
    # Migrations this host sends (its source jobs not ended yet).
    migrations: tuple[RunningMigration, ...] = ()


def agent_families(snapshot: AgentSnapshot) -> list[Family]:
    health = HealthState.worst([c.state for c in snapshot.checks])
    hypervisor = next((c for c in snapshot.checks if c.name == HYPERVISOR_CHECK), None)
    # Not probed yet counts as not connected: nothing has shown that it answers.
    libvirt_up = hypervisor is not None and hypervisor.state != HealthState.CRITICAL
    return [
        nats_family(snapshot.nats_connected),
        Family("ferry_libvirt_connected", "1 while the hypervisor (libvirt) answers the agent.", samples=(((), float(libvirt_up)),)),
        Family("ferry_vms_running", "VMs running on this host.", samples=(((), float(snapshot.running_vms)),)),
        Family(
            "ferry_host_health", "The host's health as its checks judge it: 1 for the current state.", labels=("state",),
            samples=tuple(((str(state),), 1.0 if state == health else 0.0) for state in HealthState),
        ),
        Family(
            "ferry_migration_jobs_active", "Migrations this host takes part in now, by its role.", labels=("role",),
            samples=((("source",), float(len(snapshot.migrations))), (("destination",), float(snapshot.incoming))),
        ),
        Family(
            "ferry_heartbeats_sent", "Heartbeats this agent has published since it started.", kind="counter",
            samples=(((), float(snapshot.heartbeats_sent)),),
        ),
        *migration_families(snapshot.migrations),
    ]


class AgentMetrics(SnapshotMetrics[AgentSnapshot]):
    """The registry of one agent and its /metrics server."""

    def __init__(self, address: str, snapshot: Callable[[], AgentSnapshot], host: str) -> None:
        log = structlog.get_logger().bind(component="metrics", host=host)
        super().__init__("agent", address, snapshot, AgentSnapshot(host=host), agent_families, log)
