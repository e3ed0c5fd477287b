"""Daemons and the CLI connect with a `.creds` file (JWT + nkey) over TLS to a
real nats-server that asks for both; without them they get a sentence, not a
traceback."""

import json
import subprocess

import pytest

from tests.support.nats_auth import Tenancy, secured_config, server_tls
from tests.support.nats_server import NatsServer, free_port
from tests.support.processes import script, simulated_agent_toml
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def secured(tmp_path):
    """A nats-server with TLS and JWT auth, its CA file, and a creds file per identity."""
    tenancy = Tenancy.create(tmp_path / "auth")
    tls = server_tls(tmp_path / "auth")
    port = free_port()
    server = NatsServer(tmp_path / "nats", port, config=secured_config(tenancy, tls, port, tmp_path / "nats" / "js"), scheme="tls")
    server.start()
    yield server, tenancy, tls
    server.stop()


def identity(creds, ca) -> str:
    return f'creds = "{creds}"\ntls_ca = "{ca}"\n'


def ferry(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([script("ferry"), *args], capture_output=True, text=True, timeout=60)


async def test_agent_coordinator_and_cli_connect_with_creds_over_tls(secured, daemons, tmp_path):
    server, tenancy, tls = secured
    daemons.start(
        "coordinator", "ferry-coordinator",
        f'heartbeat_timeout = 3\n[nats]\nservers = ["{server.url}"]\n{identity(tenancy.user("coordinator"), tls.ca_file)}',
    )
    daemons.start("agent", "ferry-agent", simulated_agent_toml(
        "hv1.example.com", server.url, tmp_path, vms=[("ubuntu22.04", 1, 256)],
        nats_extra=identity(tenancy.user("hv1"), tls.ca_file),
    ))
    operator = tenancy.user("operator")

    async def hv1_up():
        out = ferry("--server", server.url, "--creds", str(operator), "--tls-ca", str(tls.ca_file), "hosts", "--json", "--vms")
        if out.returncode != 0:
            return None
        hosts = json.loads(out.stdout)["hosts"]
        return hosts if [(h["host"], h["state"]) for h in hosts] == [("hv1.example.com", "up")] else None

    hosts = await eventually(hv1_up, timeout=20, every=0.5, what="hv1.example.com up through a TLS + creds CLI")
    assert [vm["name"] for vm in hosts[0]["vms"]] == ["ubuntu22.04"]
    assert "nats_connected" in daemons.log("agent") and "nats_connected" in daemons.log("coordinator")


def test_the_cli_without_credentials_is_refused_in_a_sentence(secured):
    server, _tenancy, tls = secured
    out = ferry("--server", server.url, "--tls-ca", str(tls.ca_file), "hosts")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"ferry: unauthorized: NATS at {server.url} refused these credentials")


def test_the_cli_that_does_not_trust_the_servers_ca_says_so(secured, tmp_path):
    server, tenancy, _tls = secured
    out = ferry("--server", server.url, "--creds", str(tenancy.user("operator")), "hosts")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"ferry: unavailable: the TLS certificate of NATS at {server.url} is not trusted")


def test_the_cli_names_a_missing_creds_file(tmp_path):
    out = ferry("--creds", str(tmp_path / "gone.creds"), "hosts")
    assert out.returncode == 1
    assert out.stderr == f"ferry: bad_request: --creds: the file {tmp_path}/gone.creds does not exist\n"
