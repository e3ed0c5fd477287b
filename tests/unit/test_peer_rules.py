"""What a source agent lets a migration use on the wire (agent/peer_rules.py),
what the coordinator passes on as a peer (coordinator/session_steps.py), and
that the agent's own announced peer URI is checked when its config loads."""

import pytest

from ferry.agent.config import AgentConfig, HypervisorSettings, MigrationSettings, problems
from ferry.agent.peer_rules import migrate_refusal, peer_scheme, peer_uri_problem
from ferry.coordinator.session_steps import peer_mismatch
from ferry.proto.agent import MigrateRequest, Offer
from ferry.proto.api import HostState, HostView
from ferry.proto.errors import ErrorCode
from ferry.proto.host import Capacity, HealthState
from ferry.proto.session import MigrateOptions

TLS_PEER = "qemu+tls://hv2.example.net/system"


@pytest.mark.parametrize(
    "uri, scheme",
    [
        ("qemu+tls://hv2/system", "qemu+tls"),
        ("QEMU+TLS://hv2/system", "qemu+tls"),
        ("qemu+tcp://10.0.0.2/system", "qemu+tcp"),
        ("qemu+ssh://root@hv2/system", "qemu+ssh"),
        ("qemu:///system", "qemu"),
        ("hv2", ""),
        ("", ""),
    ],
)
def test_peer_scheme(uri, scheme):
    assert peer_scheme(uri) == scheme


@pytest.mark.parametrize(
    "uri, allowed, refused_because",
    [
        ("qemu+tls://hv2/system", ["qemu+tls"], None),
        ("qemu+tls://10.0.0.2/system?pkipath=/etc/pki/libvirt", ["qemu+tls"], None),
        ("qemu+tls://hv2/system?no_verify=0", ["qemu+tls"], None),
        ("qemu+tcp://hv2/system", ["qemu+tls"], "its scheme qemu+tcp is not one of the allowed peer schemes (qemu+tls)"),
        ("qemu+tcp://hv2/system", ["qemu+tls", "qemu+tcp"], None),
        ("qemu+ssh://root@hv2/system", ["qemu+tls"], "its scheme qemu+ssh is not one"),
        ("qemu+ssh://root@hv2/system", ["qemu+tls", "qemu+ssh"], None),
        ("qemu+tls://hv2/system", [], "allowed peer schemes (none)"),
        ("hv2", ["qemu+tls"], "it is not a libvirt URI"),
        ("", ["qemu+tls"], "it is not a libvirt URI"),
        ("qemu+tls://hv2/system?no_verify=1", ["qemu+tls"], "turns off the check of the peer's certificate"),
    ],
)
def test_peer_uri_problem(uri, allowed, refused_because):
    problem = peer_uri_problem(uri, allowed)
    if refused_because is None:
        assert problem is None
    else:
        assert problem is not None and refused_because in problem


def request(*, tls: bool = True, peer_uri: str = TLS_PEER) -> MigrateRequest:
    return MigrateRequest(session_id="s1abcd", vm="web", dest="hv2", peer_uri=peer_uri, options=MigrateOptions(tls=tls))


@pytest.mark.parametrize(
    "tls, peer_uri, require_tls, allowed, code",
    [
        # The default: TLS to a qemu+tls peer only.
        (True, TLS_PEER, True, ["qemu+tls"], None),
        (False, TLS_PEER, True, ["qemu+tls"], ErrorCode.TLS_REQUIRED),
        (True, "qemu+tcp://hv2/system", True, ["qemu+tls"], ErrorCode.PEER_REFUSED),
        # Both wrong: the stream is named first (it is what `--no-tls` asked for).
        (False, "qemu+tcp://hv2/system", True, ["qemu+tls"], ErrorCode.TLS_REQUIRED),
        # An operator's deliberate plain baseline on a trusted network.
        (False, TLS_PEER, False, ["qemu+tls"], None),
        (False, "qemu+tcp://hv2/system", False, ["qemu+tls", "qemu+tcp"], None),
        # Allowing plain streams does not allow other peers.
        (False, "qemu+tcp://hv2/system", False, ["qemu+tls"], ErrorCode.PEER_REFUSED),
    ],
)
def test_migrate_refusal(tls, peer_uri, require_tls, allowed, code):
    refusal = migrate_refusal(request(tls=tls, peer_uri=peer_uri), require_tls=require_tls, allowed_schemes=allowed)
    assert (refusal.code if refusal else None) == code


def test_the_tls_refusal_says_how_to_allow_plain_migrations():
    refusal = migrate_refusal(request(tls=False), require_tls=True, allowed_schemes=["qemu+tls"])
    assert refusal is not None
    assert "require_tls = false" in refusal.message and "[migration]" in refusal.message


def test_the_peer_refusal_names_the_peer_and_the_key():
    refusal = migrate_refusal(request(peer_uri="qemu+tcp://hv2/system"), require_tls=True, allowed_schemes=["qemu+tls"])
    assert refusal is not None
    assert refusal.message.startswith("web is not sent to qemu+tcp://hv2/system: its scheme qemu+tcp")
    assert "allowed_peer_schemes" in refusal.message


# ----- the agent's own config -----


def agent(peer_uri: str, **migration) -> AgentConfig:
    return AgentConfig(
        host="hv1",
        hypervisor=HypervisorSettings(backend="simulated", peer_uri=peer_uri),
        migration=MigrationSettings(**migration),
    )


def peer_problems(config: AgentConfig) -> list[str]:
    return [p for p in problems(config) if "peer" in p]


def test_the_defaults_require_tls_and_qemu_tls_peers():
    settings = MigrationSettings()
    assert settings.require_tls is True and settings.allowed_peer_schemes == ["qemu+tls"]


def test_an_announced_qemu_tls_peer_uri_is_no_problem():
    assert peer_problems(agent("qemu+tls://hv1.example.net/system")) == []


def test_an_announced_plain_tcp_peer_uri_is_a_problem():
    (problem,) = peer_problems(agent("qemu+tcp://hv1.example.net/system"))
    assert problem.startswith("hypervisor.peer_uri qemu+tcp://hv1.example.net/system would be refused")
    assert "allowed_peer_schemes" in problem


def test_an_announced_plain_tcp_peer_uri_is_fine_where_the_operator_allows_it():
    assert peer_problems(agent("qemu+tcp://hv1/system", allowed_peer_schemes=["qemu+tls", "qemu+tcp"])) == []


def test_no_allowed_peer_scheme_at_all_is_a_problem():
    found = peer_problems(agent("qemu+tls://hv1/system", allowed_peer_schemes=[]))
    assert any(p.startswith("migration.allowed_peer_schemes is empty") for p in found)


# ----- the coordinator: only a peer the destination announced -----


def view(host: str, peer_uri: str, state: HostState = HostState.UP) -> HostView:
    return HostView(
        host=host, state=state, health=HealthState.OK, last_seen_age=0.5,
        capacity=Capacity(cpus=8, memory_total_mib=16384, memory_free_mib=12000), peer_uri=peer_uri,
    )


def offer(peer_uri: str, host: str = "hv2") -> Offer:
    return Offer(session_id="s1abcd", host=host, peer_uri=peer_uri)


@pytest.mark.parametrize(
    "offered, views, mismatch",
    [
        (TLS_PEER, [view("hv2", TLS_PEER)], None),
        (TLS_PEER, [view("hv1", "qemu+tls://hv1/system"), view("hv2", TLS_PEER)], None),
        # An answer to `prepare` from someone other than hv2 names its own address.
        ("qemu+tls://evil.example.net/system", [view("hv2", TLS_PEER)], "hv2 offered qemu+tls://evil.example.net/system"),
        ("qemu+tcp://hv2.example.net/system", [view("hv2", TLS_PEER)], "but its heartbeat announces " + TLS_PEER),
        # A host that announces none (or no longer reports) cannot be vouched for.
        (TLS_PEER, [view("hv2", "")], "its heartbeat announces none"),
        (TLS_PEER, [view("hv1", TLS_PEER)], "hv2 does not report"),
    ],
)
def test_peer_mismatch(offered, views, mismatch):
    found = peer_mismatch(offer(offered), views)
    if mismatch is None:
        assert found is None
    else:
        assert found is not None and mismatch in found
