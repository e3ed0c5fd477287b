"""Config files: strict keys (every unknown one named), typed values, the files they
name, and `--check-config` of both daemons (exit 0, or 2 with every problem)."""

import pytest

from ferry.agent.config import AgentConfig
from ferry.agent.config import problems as agent_problems
from ferry.agent.main import main as agent_main
from ferry.coordinator.config import CoordinatorConfig, LeaderSettings
from ferry.coordinator.config import problems as coordinator_problems
from ferry.coordinator.main import main as coordinator_main
from ferry.runtime.config import ConfigError, NatsSettings, load_toml, nats_problems, read_config, unknown_keys


def write(tmp_path, text: str, name: str = "config.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def simulated_agent(tmp_path, extra: str = "") -> str:
    return f'host = "hv1"\nimages_dir = "{tmp_path}"\n{extra}\n[hypervisor]\nbackend = "simulated"\n'


def test_every_unknown_key_is_named_with_the_closest_known_one(tmp_path):
    path = write(tmp_path, """
host = "hv1"
heartbeat_intervall = 3
[nats]
cred = "/x"
[hypervisor.simulated]
vms = [{name = "a"}, {name = "b", vcpu = 2}]
[helth]
interval = 1
""")
    config, found = read_config(path, AgentConfig)
    assert found == [
        "unknown key heartbeat_intervall (did you mean heartbeat_interval?)",
        "unknown key nats.cred (did you mean nats.creds?)",
        "unknown key hypervisor.simulated.vms[1].vcpu (did you mean hypervisor.simulated.vms[1].vcpus?)",
        "unknown key helth (did you mean health?)",
    ]
    assert config is not None  # the rest still decodes, so file checks can run too


def test_a_key_with_no_close_match_gets_no_hint():
    assert unknown_keys({"zzzz": 1}, NatsSettings) == ["unknown key zzzz"]


def test_shared_wire_structs_inside_a_config_are_strict_there_too(tmp_path):
    path = write(tmp_path, "[limits]\ncluster = 3\nclustre = 4\n")
    assert read_config(path, CoordinatorConfig)[1] == ["unknown key limits.clustre (did you mean limits.cluster?)"]


def test_wrong_values_and_broken_files_are_problems_not_tracebacks(tmp_path):
    assert read_config(tmp_path / "missing.toml", AgentConfig) == (None, ["cannot read it: No such file or directory"])
    _, found = read_config(write(tmp_path, "host = \n"), AgentConfig)
    assert found[0].startswith("not valid TOML")
    _, found = read_config(write(tmp_path, 'host = "hv1"\nheartbeat_interval = 0\n'), AgentConfig)
    assert found == ["Expected `float` > 0.0 - at `$.heartbeat_interval`"]
    _, found = read_config(write(tmp_path, 'host = "hv_1"\n'), AgentConfig)
    assert "$.host" in found[0]
    with pytest.raises(ConfigError) as caught:
        load_toml(write(tmp_path, 'host = "hv1"\nbogus = 1\n'), AgentConfig)
    assert caught.value.problems == ["unknown key bogus"] and "config.toml" in str(caught.value)


def test_fqdn_host_names_are_accepted(tmp_path):
    assert load_toml(write(tmp_path, 'host = "hv1.dc1.example.com"\n'), AgentConfig).host == "hv1.dc1.example.com"


def test_files_the_nats_section_names_must_exist(tmp_path):
    ca = write(tmp_path, "pem", "ca.pem")
    settings = NatsSettings(creds=str(tmp_path / "gone.creds"), tls_ca=str(ca), tls_key=str(ca))
    assert nats_problems(settings) == [
        f"nats.creds: the file {tmp_path}/gone.creds does not exist",
        "nats.tls_key is set without nats.tls_cert",
    ]
    assert nats_problems(NatsSettings(creds=str(ca), token="t")) == [
        "nats: use one of identity, creds, user/password or token, not several"
    ]
    assert nats_problems(NatsSettings(tls_ca=str(tmp_path))) == [f"nats.tls_ca: {tmp_path} is a folder, not a file"]


def test_agent_config_problems(tmp_path):
    config = load_toml(write(tmp_path, f"""
host = "hv1"
images_dir = "{tmp_path}/no-images"
[hypervisor]
peer_uri = ""
[health]
memory_warning_percent = 2
memory_critical_percent = 5
probe_dir = "{write(tmp_path, "x", "not-a-folder")}"
"""), AgentConfig)
    found = agent_problems(config)
    assert f"images_dir: the folder {tmp_path}/no-images does not exist" in found
    assert f"health.probe_dir: {tmp_path}/not-a-folder is not a folder" in found
    assert "health.memory_critical_percent (5) is above health.memory_warning_percent (2)" in found
    assert any(p.startswith("hypervisor.peer_uri is empty") for p in found)


def test_a_good_simulated_agent_config_has_no_problems(tmp_path):
    assert agent_problems(load_toml(write(tmp_path, simulated_agent(tmp_path)), AgentConfig)) == []


def test_coordinator_config_problems_name_missing_files(tmp_path):
    config = load_toml(write(tmp_path, f'[nats]\ncreds = "{tmp_path}/c.creds"\n'), CoordinatorConfig)
    assert coordinator_problems(config) == [f"nats.creds: the file {tmp_path}/c.creds does not exist"]


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (
            CoordinatorConfig(leader=LeaderSettings(lease_seconds=2.0, step_down_after=2.5)),
            "leader.step_down_after must be shorter than leader.lease_seconds",
        ),
        (CoordinatorConfig(leader=LeaderSettings(renew_every=3.0)), "leader.renew_every must be shorter than leader.step_down_after"),
        (CoordinatorConfig(name="c 1"), "name 'c 1': use letters, digits"),
    ],
)
def test_coordinator_config_problems_name_a_lease_that_cannot_work_and_a_bad_name(config, problem):
    (found,) = coordinator_problems(config)
    assert found.startswith(problem)


@pytest.mark.parametrize("main", [agent_main, coordinator_main], ids=["ferry-agent", "ferry-coordinator"])
def test_check_config_exits_2_naming_a_typo_d_key(tmp_path, capsys, main):
    text = simulated_agent(tmp_path, "heartbeat_intervall = 3") if main is agent_main else "agent_timout = 3\n"
    path = write(tmp_path, text)
    assert main(["--config", str(path), "--check-config"]) == 2
    err = capsys.readouterr().err
    key, right = ("heartbeat_intervall", "heartbeat_interval") if main is agent_main else ("agent_timout", "agent_timeout")
    assert f"unknown key {key} (did you mean {right}?)" in err and "Traceback" not in err


@pytest.mark.parametrize("main", [agent_main, coordinator_main], ids=["ferry-agent", "ferry-coordinator"])
def test_check_config_exits_0_on_a_good_config(tmp_path, capsys, main):
    path = write(tmp_path, simulated_agent(tmp_path) if main is agent_main else "agent_timeout = 3\n")
    assert main(["--config", str(path), "--check-config"]) == 0
    assert "is good" in capsys.readouterr().out


def test_a_daemon_refuses_to_start_with_every_problem_listed(tmp_path, capsys):
    path = write(tmp_path, simulated_agent(tmp_path, "bogus = 1") + f'[nats]\ncreds = "{tmp_path}/x.creds"\n')
    assert agent_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "has 2 problems" in err and "unknown key bogus" in err and "x.creds does not exist" in err
