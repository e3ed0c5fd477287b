"""The pure half of /metrics: snapshots of plain data into metric families, what an
ended session counts as, and the metrics address in the configs."""

import asyncio
import socket
import urllib.request

import pytest
import structlog
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from ferry.agent.config import AgentConfig
from ferry.agent.config import problems as agent_problems
from ferry.agent.metrics import AgentMetrics, AgentSnapshot, agent_families
from ferry.coordinator.config import CoordinatorConfig
from ferry.coordinator.config import problems as coordinator_problems
from ferry.coordinator.metrics import (
    CoordinatorMetrics,
    CoordinatorSnapshot,
    Ending,
    HostSeen,
    SessionSeen,
    coordinator_families,
    ending,
)
from ferry.lab.nats import free_ports
from ferry.proto.api import HostState
from ferry.proto.host import HealthCheck, HealthState
from ferry.proto.progress import Progress
from ferry.proto.session import MigrateOptions, Outcome, Session, SessionState
from ferry.runtime.metrics import (
    Family,
    RunningMigration,
    metrics_url,
    migration_families,
    new_registry,
    parse_address,
    serve,
)
from tests.support.waiting import eventually

S = SessionState
UP, LOST = HostState.UP, HostState.LOST
OK, WARNING, CRITICAL = HealthState.OK, HealthState.WARNING, HealthState.CRITICAL


def values(families: list[Family], name: str) -> dict[tuple[str, ...], float]:
    family = next(f for f in families if f.name == name)
    return dict(family.samples)


def names(families: list[Family]) -> list[str]:
    return [f.name for f in families]


# ----- the address -----


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::1]:9465", ("::1", 9465)),
        ("metrics.example:65535", ("metrics.example", 65535)),
    ],
)
def test_an_address_is_host_and_port(text, parsed):
    assert parse_address(text) == parsed


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("9464", "is not HOST:PORT"),
        (":9464", "is not HOST:PORT"),
        ("127.0.0.1:", "is not HOST:PORT"),
        ("127.0.0.1:http", "is not HOST:PORT"),
        ("127.0.0.1:0", "the port must be 1 to 65535"),
        ("127.0.0.1:70000", "the port must be 1 to 65535"),
        ("::1:9464", "put an IPv6 address in brackets"),
        ("[nope]:9464", "is not an IPv6 address"),
    ],
)
def test_a_bad_address_says_why(text, says):
    with pytest.raises(ValueError) as raised:
        parse_address(text)
    assert says in str(raised.value)


def test_the_configs_name_a_bad_metrics_address(tmp_path):
    coordinator = coordinator_problems(CoordinatorConfig(metrics_address="localhost"))
    agent = agent_problems(AgentConfig(host="hv1", images_dir=str(tmp_path), metrics_address="localhost"))
    for found in (coordinator, agent):
        assert any(p.startswith("metrics_address: 'localhost' is not HOST:PORT") for p in found), found


def test_metrics_are_on_loopback_by_default_and_can_be_turned_off(tmp_path):
    assert CoordinatorConfig().metrics_address == "127.0.0.1:9464"
    assert AgentConfig(host="hv1").metrics_address == "127.0.0.1:9465"
    assert not any("metrics" in p for p in coordinator_problems(CoordinatorConfig(metrics_address="")))


# ----- migrations in flight -----


def test_each_sampled_migration_has_its_transfer_gauges():
    running = [
        RunningMigration("s1", "web-1", "hv1", "hv2", Progress(data_processed=100, data_remaining=900, bandwidth_bps=50,
                                                               dirty_rate_bps=7)),
        RunningMigration("s2", "db-1", "hv1", "hv3", None),  # no sample yet: no gauges
    ]
    families = migration_families(running)
    key = ("web-1", "s1", "hv1", "hv2")
    assert names(families) == [
        "ferry_migration_data_processed_bytes",
        "ferry_migration_data_remaining_bytes",
        "ferry_migration_memory_transfer_rate_bytes",
        "ferry_migration_dirty_memory_rate_bytes",
    ]
    assert [values(families, n) for n in names(families)] == [{key: 100.0}, {key: 900.0}, {key: 50.0}, {key: 7.0}]
    assert all(f.labels == ("vm", "session", "source", "dest") for f in families)


# ----- the coordinator -----


def session_seen(session_id: str, state: SessionState, progress: Progress | None = None) -> SessionSeen:
    return SessionSeen(state, RunningMigration(session_id, f"vm-{session_id}", "hv1", "hv2", progress))


def test_a_standby_reports_hosts_but_no_sessions():
    snapshot = CoordinatorSnapshot(
        coordinator="c2", leader=False, nats_connected=True,
        hosts=(
            HostSeen("hv1", UP, OK, heartbeat_age_seconds=0.5),
            HostSeen("hv2", UP, WARNING, draining=True, heartbeat_age_seconds=1.0),
            HostSeen("hv3", LOST, CRITICAL, heartbeat_age_seconds=30.0),
        ),
    )
    families = coordinator_families(snapshot)
    assert values(families, "ferry_coordinator_leader") == {("c2",): 0.0}
    assert values(families, "ferry_nats_connected") == {(): 1.0}
    assert values(families, "ferry_hosts") == {
        ("up", "ok"): 1.0, ("up", "warning"): 1.0, ("up", "critical"): 0.0,
        ("lost", "ok"): 0.0, ("lost", "warning"): 0.0, ("lost", "critical"): 1.0,
    }
    assert values(families, "ferry_hosts_draining") == {(): 1.0}
    assert values(families, "ferry_host_draining") == {("hv1",): 0.0, ("hv2",): 1.0, ("hv3",): 0.0}
    assert values(families, "ferry_host_heartbeat_age_seconds") == {("hv1",): 0.5, ("hv2",): 1.0, ("hv3",): 30.0}
    assert "ferry_migrations" not in names(families) and "ferry_migration_queue_depth" not in names(families)


def test_the_leader_reports_phases_queue_and_transfers():
    snapshot = CoordinatorSnapshot(
        coordinator="c1", leader=True, nats_connected=False,
        sessions=(
            session_seen("a", S.QUEUED),
            session_seen("b", S.QUEUED),
            session_seen("c", S.PREPARING),
            session_seen("d", S.MIGRATING, Progress(data_processed=10, data_remaining=20)),
            session_seen("e", S.POSTCOPY, Progress(data_processed=30, data_remaining=1)),
        ),
    )
    families = coordinator_families(snapshot)
    assert values(families, "ferry_coordinator_leader") == {("c1",): 1.0}
    assert values(families, "ferry_nats_connected") == {(): 0.0}
    assert values(families, "ferry_migrations") == {
        ("queued",): 2.0, ("preparing",): 1.0, ("migrating",): 1.0, ("postcopy",): 1.0,
    }
    assert values(families, "ferry_migration_queue_depth") == {(): 2.0}
    assert values(families, "ferry_migration_data_processed_bytes") == {
        ("vm-d", "d", "hv1", "hv2"): 10.0, ("vm-e", "e", "hv1", "hv2"): 30.0,
    }


def test_a_leader_without_sessions_still_has_every_phase_at_zero():
    families = coordinator_families(CoordinatorSnapshot(coordinator="c1", leader=True, sessions=()))
    assert values(families, "ferry_migrations") == {
        ("queued",): 0.0, ("preparing",): 0.0, ("migrating",): 0.0, ("postcopy",): 0.0,
    }
    assert values(families, "ferry_migration_data_processed_bytes") == {}


def session(state: SessionState, code: str = "", outcome: Outcome | None = None, id: str = "s1") -> Session:
    return Session(
        id=id, vm="web-1", source="hv1", options=MigrateOptions(), state=state, created_at=0.0, updated_at=0.0,
        dest="hv2", code=code, outcome=outcome,
    )


@pytest.mark.parametrize(
    ("ended", "counts_as"),
    [
        (session(S.MIGRATING), None),
        (session(S.QUEUED), None),
        (
            session(S.COMPLETED, outcome=Outcome(total_time_ms=12_500, downtime_ms=40)),
            Ending("succeeded", downtime_seconds=0.04, duration_seconds=12.5),
        ),
        # libvirt kept no statistics: nothing to observe.
        (session(S.COMPLETED, outcome=Outcome()), Ending("succeeded")),
        (session(S.COMPLETED), Ending("succeeded")),
        (session(S.FAILED, "migration_failed", Outcome(total_time_ms=3000)), Ending("failed", "migration_failed", duration_seconds=3.0)),
        (session(S.FAILED, "no_destination"), Ending("failed", "no_destination")),
        (session(S.FAILED), Ending("failed", "unknown")),
        (session(S.CANCELLED, "cancelled"), Ending("cancelled", "cancelled")),
    ],
)
def test_what_an_ended_session_counts_as(ended, counts_as):
    assert ending(ended) == counts_as


def test_the_leader_counts_each_session_once():
    metrics = CoordinatorMetrics("", lambda: CoordinatorSnapshot(coordinator="c1"), "c1")
    metrics.session_ended(session(S.FAILED, "not_confirmed", id="s1"))
    # Settled later: the same session ends again; it was counted already.
    metrics.session_ended(session(S.COMPLETED, outcome=Outcome(total_time_ms=2000, downtime_ms=30), id="s1"))
    metrics.session_ended(session(S.COMPLETED, outcome=Outcome(total_time_ms=2000, downtime_ms=30), id="s2"))
    metrics.session_ended(session(S.MIGRATING, id="s3"))
    get = metrics.registry.get_sample_value
    assert get("ferry_migration_failed_total", {"code": "not_confirmed"}) == 1.0
    assert get("ferry_migration_succeeded_total") == 1.0
    assert get("ferry_migration_downtime_seconds_count") == 1.0
    assert get("ferry_migration_downtime_seconds_bucket", {"le": "0.05"}) == 1.0
    assert get("ferry_migration_duration_seconds_sum") == 2.0
    text = generate_latest(metrics.registry).decode()
    assert 'ferry_build_info{daemon="coordinator",version=' in text


# ----- the agent -----


def test_an_agent_reports_its_host_and_the_migrations_it_sends():
    snapshot = AgentSnapshot(
        host="hv1", nats_connected=True,
        checks=(HealthCheck("hypervisor", OK), HealthCheck("memory", WARNING, "8% free")),
        running_vms=3, heartbeats_sent=42, incoming=1,
        migrations=(RunningMigration("s1", "web-1", "hv1", "hv2", Progress(data_processed=5, dirty_rate_bps=9)),),
    )
    families = agent_families(snapshot)
    assert values(families, "ferry_nats_connected") == {(): 1.0}
    assert values(families, "ferry_libvirt_connected") == {(): 1.0}
    assert values(families, "ferry_vms_running") == {(): 3.0}
    assert values(families, "ferry_host_health") == {("ok",): 0.0, ("warning",): 1.0, ("critical",): 0.0}
    assert values(families, "ferry_migration_jobs_active") == {("source",): 1.0, ("destination",): 1.0}
    assert values(families, "ferry_heartbeats_sent") == {(): 42.0}
    assert next(f for f in families if f.name == "ferry_heartbeats_sent").kind == "counter"
    assert values(families, "ferry_migration_dirty_memory_rate_bytes") == {("web-1", "s1", "hv1", "hv2"): 9.0}


@pytest.mark.parametrize(
    ("checks", "connected"),
    [
        ((), 0.0),  # not probed yet
        ((HealthCheck("hypervisor", CRITICAL, "libvirt is not answering"),), 0.0),
        ((HealthCheck("hypervisor", OK), HealthCheck("memory", CRITICAL)), 1.0),
    ],
)
def test_libvirt_counts_as_connected_while_its_check_is_not_critical(checks, connected):
    families = agent_families(AgentSnapshot(host="hv1", checks=checks))
    assert values(families, "ferry_libvirt_connected") == {(): connected}


# ----- the server -----


async def _get(url: str) -> str:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    return await asyncio.to_thread(get)


async def test_the_server_serves_fresh_snapshots_and_frees_its_port_when_cancelled():
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    taken: list[int] = []
    metrics = AgentMetrics(address, lambda: AgentSnapshot(host="hv1", heartbeats_sent=len(taken)), "hv1")
    with capture_logs() as logs:
        serving = asyncio.create_task(metrics.run())
        taken.append(1)
        text = await eventually(lambda: _get(metrics_url(address)), timeout=10, what="/metrics answering")
        assert "ferry_build_info" in text and "ferry_heartbeats_sent_total" in text
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    assert any(e["event"] == "metrics_served" for e in logs)
    # Stopped: nothing listens any more; a restarted daemon binds the port at once
    # (with SO_REUSEADDR, as the server does, past the closed connections' TIME_WAIT).
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


async def test_a_taken_port_is_an_error_in_the_log_and_nothing_else():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        with capture_logs() as logs:
            await serve(address, new_registry("agent"), structlog.get_logger())
    (event,) = [e for e in logs if e["event"] == "metrics_not_served"]
    assert event["log_level"] == "error" and event["address"] == address and event["error"] == "Address already in use"
