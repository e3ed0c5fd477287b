"""The shipped alert rules and Grafana dashboard: valid for promtool, and naming only
metrics the daemons export."""

import json
import re
import subprocess
from pathlib import Path

from prometheus_client import generate_latest

from ferry.agent.metrics import AgentMetrics, AgentSnapshot
from ferry.coordinator.metrics import CoordinatorMetrics, CoordinatorSnapshot, HostSeen, SessionSeen
from ferry.proto.api import HostState
from ferry.proto.ha import HaPriority, Restart, RestartState
from ferry.proto.host import HealthState
from ferry.proto.progress import Progress
from ferry.proto.session import MigrateOptions, Outcome, Session, SessionState
from ferry.runtime.metrics import RunningMigration
from tests.support.prometheus import check_metrics, promtool, samples

DEPLOY = Path(__file__).parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "ferry.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "ferry-dashboard.json"
METRIC = re.compile(r"\bferry_[a-z0-9_]+")


def exported() -> tuple[set[str], list[str]]:
    """Every sample name the daemons export (a leader mid-migration with one ended
    session of each kind, an agent sending one), and their expositions."""
    migration = RunningMigration("s1", "web-1", "hv1", "hv2", Progress(data_processed=1, data_remaining=2))
    coordinator = CoordinatorMetrics("", lambda: CoordinatorSnapshot(
        coordinator="c1", leader=True, nats_connected=True,
        hosts=(HostSeen("hv1", HostState.UP, HealthState.OK),),
        sessions=(SessionSeen(SessionState.MIGRATING, migration),),
    ), "c1")
    coordinator.refresh()
    for state, code in ((SessionState.COMPLETED, ""), (SessionState.FAILED, "migration_failed"), (SessionState.CANCELLED, "cancelled")):
        coordinator.session_ended(Session(
            id=f"s-{state}", vm="web-1", source="hv1", options=MigrateOptions(), state=state, created_at=0, updated_at=0,
            code=code, outcome=Outcome(total_time_ms=1000, downtime_ms=20),
        ))
    for state, code in ((RestartState.RUNNING, ""), (RestartState.FAILED, "disk_locked")):
        coordinator.restart_ended(Restart(
            id=f"r-{state}", vm="db", host="hv1", priority=HaPriority.HIGH, state=state, created_at=0, updated_at=0,
            code=code, seconds=7.5,
        ))
    agent = AgentMetrics("", lambda: AgentSnapshot(host="hv1", migrations=(migration,)), "hv1")
    agent.refresh()
    texts = [generate_latest(m.registry).decode() for m in (coordinator, agent)]
    return {name for text in texts for name in samples(text)}, texts


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels, "the dashboard has no panels"
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_the_exported_metrics_pass_promtool():
    _, texts = exported()
    for text in texts:
        check_metrics(text)


def test_the_alert_rules_pass_promtool():
    run = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, timeout=30)
    assert run.returncode == 0, (run.stdout + run.stderr).decode(errors="replace")


def test_every_alert_says_what_happened_and_what_to_do():
    text = RULES.read_text()
    alerts = re.findall(r"- alert: (\w+)", text)
    assert len(alerts) >= 7
    assert text.count("summary:") == len(alerts) and text.count("description:") == len(alerts)


def test_the_rules_and_the_dashboard_name_only_exported_metrics():
    names, _ = exported()
    used = set(METRIC.findall(RULES.read_text())) | {m for expr in dashboard_exprs() for m in METRIC.findall(expr)}
    assert used - names == set()
    # What the rules must watch is there.
    for needed in ("ferry_coordinator_leader", "ferry_nats_connected", "ferry_migration_failed_total",
                   "ferry_migration_downtime_seconds_bucket", "ferry_host_heartbeat_age_seconds"):
        assert needed in used


def test_the_dashboard_queries_are_valid_promql(tmp_path):
    # promtool checks PromQL inside rule files: each query as a recording rule.
    exprs = [e.replace("$__rate_interval", "5m") for e in dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    run = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, timeout=30)
    assert run.returncode == 0, (run.stdout + run.stderr).decode(errors="replace")
