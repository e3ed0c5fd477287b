"""Identities and the permissions the generated nats-server config gives them."""

import json
import stat

import pytest

from ferry.cli import admin
from ferry.cli.identities import Member, authorization_conf, permissions, problems
from ferry.proto import subjects
from ferry.runtime.identity import Role, inbox_prefix, read_identity


def member(name: str, role: Role) -> Member:
    return Member(name, role, "U" + "A" * 55)


def test_a_host_publishes_only_under_its_own_token_and_hears_only_its_own_verbs():
    rules = permissions(member("hv1.dc1.example.com", Role.HOST))
    assert rules["publish"] == {"allow": ["ferry.host.hv1_dc1_example_com.>"]}
    assert rules["subscribe"]["allow"] == ["ferry.agent.hv1_dc1_example_com.>", "_INBOX.hv1_dc1_example_com.>", "$SRV.>"]
    assert rules["allow_responses"] is True


def test_a_viewer_may_send_read_verbs_only_and_an_admin_every_verb_under_its_own_token():
    viewer = permissions(member("bob", Role.VIEWER))["publish"]["allow"]
    assert subjects.api("hosts", caller="bob") in viewer
    assert subjects.via_api("*", "status", caller="bob") in viewer
    for verb in subjects.WRITE_VERBS:
        assert subjects.api(verb, caller="bob") not in viewer
    assert all(s.startswith("ferry.api.bob.") for s in viewer)
    assert permissions(member("alice", Role.ADMIN))["publish"] == {"allow": ["ferry.api.alice.>"]}
    assert "allow_responses" not in permissions(member("alice", Role.ADMIN))


def test_only_coordinators_publish_to_agents_and_serve_the_api():
    coordinator = permissions(member("c1", Role.COORDINATOR))
    assert "ferry.agent.>" in coordinator["publish"]["allow"]
    assert "ferry.api.>" in coordinator["subscribe"]["allow"]
    for role in (Role.HOST, Role.ADMIN, Role.VIEWER):
        rules = permissions(member("x", role))
        assert not any(s.startswith("ferry.agent.>") for s in rules["publish"]["allow"])
        assert "ferry.api.>" not in rules["subscribe"]["allow"]


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ([member("hv1", Role.HOST), member("hv1", Role.ADMIN)], "share"),
        ([member("hv1.a", Role.HOST), member("hv1_a", Role.HOST)], "not a host name"),
        ([member("Alice", Role.ADMIN)], "lower-case"),
        ([member("anonymous", Role.ADMIN)], "reserved"),
        ([member("via", Role.VIEWER)], "reserved"),
    ],
)
def test_names_that_would_clash_or_break_a_subject_are_refused(members, words):
    assert any(words in p for p in problems(members))


def test_the_config_lists_one_user_per_identity():
    text = authorization_conf([member("c1", Role.COORDINATOR), member("hv1", Role.HOST)])
    users = [json.loads(line.strip().rstrip(",")) for line in text.splitlines() if line.strip().startswith("{")]
    assert [u["permissions"]["publish"]["allow"][0] for u in users] == ["ferry.host.hv1.>", "ferry.agent.>"]


def test_identities_are_made_once_kept_when_hosts_are_added_and_removed_on_request(tmp_path, capsys):
    out = tmp_path / "ids"
    admin.main(["identities", "--out", str(out), "--hosts", "hv1,hv2", "--coordinators", "c1", "--admins", "alice"])
    first = read_identity(out / "hosts" / "hv1.identity")
    assert first.role == Role.HOST and first.seed.startswith("SU")
    assert stat.S_IMODE((out / "hosts" / "hv1.identity").stat().st_mode) == 0o600
    assert inbox_prefix(first.name) == "_INBOX.hv1"

    admin.main(["identities", "--out", str(out), "--hosts", "hv3", "--viewers", "bob"])
    assert read_identity(out / "hosts" / "hv1.identity") == first, "an existing identity keeps its seed"
    conf = (out / admin.AUTHORIZATION).read_text()
    assert all(f"# host {h}" in conf for h in ("hv1", "hv2", "hv3")) and "# viewer bob" in conf
    assert "new host hv3" in capsys.readouterr().out

    admin.main(["identities", "--out", str(out), "--remove", "hv2"])
    assert not (out / "hosts" / "hv2.identity").exists()
    assert "# host hv2" not in (out / admin.AUTHORIZATION).read_text()


def test_a_name_cannot_change_role_and_a_bad_name_writes_nothing(tmp_path):
    out = tmp_path / "ids"
    admin.main(["identities", "--out", str(out), "--hosts", "hv1"])
    with pytest.raises(SystemExit, match="already a host"):
        admin.main(["identities", "--out", str(out), "--admins", "hv1"])
    with pytest.raises(SystemExit, match="lower-case"):
        admin.main(["identities", "--out", str(out), "--admins", "Bad_Name"])
    assert not (out / "admins").exists()


def test_an_identity_file_others_can_read_is_refused(tmp_path):
    out = tmp_path / "ids"
    admin.main(["identities", "--out", str(out), "--admins", "alice"])
    path = out / "admins" / "alice.identity"
    path.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        read_identity(path)
