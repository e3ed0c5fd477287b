import os

import pytest

from tests.support.nats_server import NatsCluster, NatsServer, secured_nats
from tests.support.processes import Daemons

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI nothing that matters is skipped: a skip is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"


@pytest.fixture
def nats_server(tmp_path):
    """A nats-server secured as in production: TLS, and an nkey identity with its
    permissions for each daemon and client (tests/support/secured.py)."""
    server = NatsServer(tmp_path / "nats", secured=secured_nats(tmp_path / "security"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_cluster(tmp_path):
    """Three clustered nats-servers with JetStream, secured (tests/support/nats_server.py)."""
    cluster = NatsCluster(tmp_path / "nats-cluster", secured=secured_nats(tmp_path / "security"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def daemons(tmp_path):
    d = Daemons(tmp_path)
    yield d
    d.stop_all()
