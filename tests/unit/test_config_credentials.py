"""Paths in [nats] under ${CREDENTIALS_DIRECTORY}/ name systemd credentials (LoadCredential=)."""

import pytest

from ferry.coordinator.config import CoordinatorConfig
from ferry.coordinator.config import problems as coordinator_problems
from ferry.runtime.config import NatsSettings, credential_name, nats_problems, resolve_credentials, with_credentials
from ferry.runtime.daemon import EXIT_BAD_CONFIG, run_daemon

CRED = "${CREDENTIALS_DIRECTORY}/"


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("${CREDENTIALS_DIRECTORY}/identity", "identity"),
        ("${CREDENTIALS_DIRECTORY}/nats-ca.pem", "nats-ca.pem"),
        ("/etc/ferry/nats-ca.pem", None),
        ("$CREDENTIALS_DIRECTORY/identity", None),
        ("", None),
    ],
)
def test_credential_names(path, name):
    assert credential_name(path) == name


def test_credential_paths_resolve_under_the_directory_and_others_stay():
    nats = NatsSettings(identity=CRED + "identity", tls_ca="/etc/ferry/nats-ca.pem", tls_cert=CRED + "cert.pem")
    resolved = resolve_credentials(nats, "/run/credentials/ferry-agent.service")
    assert (resolved.identity, resolved.tls_ca, resolved.tls_cert, resolved.tls_key) == (
        "/run/credentials/ferry-agent.service/identity", "/etc/ferry/nats-ca.pem",
        "/run/credentials/ferry-agent.service/cert.pem", "",
    )


@pytest.mark.parametrize("directory", [None, ""])
def test_without_the_directory_nothing_resolves_and_the_problem_says_why(directory):
    nats = resolve_credentials(NatsSettings(identity=CRED + "identity", tls_ca=CRED + "nats-ca.pem"), directory)
    assert nats.identity == CRED + "identity"
    assert nats_problems(nats) == [
        f"nats.{key} is {CRED}{name}, a systemd credential, but CREDENTIALS_DIRECTORY is not set: start the daemon"
        " from its unit (LoadCredential=), or set CREDENTIALS_DIRECTORY to the folder that holds the credentials"
        for key, name in (("identity", "identity"), ("tls_ca", "nats-ca.pem"))
    ]


@pytest.mark.parametrize("name", ["..", ".", "sub/key.pem", "../../etc/shadow", ""])
def test_a_credential_name_is_one_file_name(name):
    nats = resolve_credentials(NatsSettings(tls_key=CRED + name, tls_cert="/c.pem"), "/run/credentials/x")
    assert nats.tls_key == CRED + name
    assert nats_problems(nats) == [f"nats.tls_key: {CRED}{name} must name one credential, a plain file name as LoadCredential= gives it"]


def test_resolved_credentials_are_checked_like_any_file(tmp_path):
    (tmp_path / "nats-ca.pem").write_text("ca")
    config = with_credentials(
        CoordinatorConfig(nats=NatsSettings(tls_ca=CRED + "nats-ca.pem", creds=CRED + "gone.creds")), str(tmp_path)
    )
    assert config.nats.tls_ca == str(tmp_path / "nats-ca.pem")
    assert nats_problems(config.nats) == [f"nats.creds: the file {tmp_path}/gone.creds does not exist"]


def test_a_config_without_nats_is_returned_as_it_is():
    assert with_credentials("not a config", "/run/credentials/x") == "not a config"


def _check_config(tmp_path, capsys) -> tuple[int, str]:
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[nats]\ntls_ca = "{CRED}nats-ca.pem"\n')
    code = run_daemon(
        prog="ferry-coordinator", description="", config_type=CoordinatorConfig, run=None, problems=coordinator_problems,
        argv=["--config", str(config), "--check-config"],
    )
    out = capsys.readouterr()
    return code, out.out + out.err


def test_check_config_reports_credentials_without_their_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    code, said = _check_config(tmp_path, capsys)
    assert code == EXIT_BAD_CONFIG
    assert f"nats.tls_ca is {CRED}nats-ca.pem, a systemd credential, but CREDENTIALS_DIRECTORY is not set" in said


def test_check_config_finds_the_credentials_in_their_directory(tmp_path, capsys, monkeypatch):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    code, said = _check_config(tmp_path, capsys)
    assert (code, said) == (EXIT_BAD_CONFIG, f"ferry-coordinator: config file {tmp_path}/coordinator.toml has a problem:\n"
                                             f"  - nats.tls_ca: the file {credentials}/nats-ca.pem does not exist\n")
    (credentials / "nats-ca.pem").write_text("ca")
    assert _check_config(tmp_path, capsys) == (0, f"ferry-coordinator: config file {tmp_path}/coordinator.toml is good\n")
