from pathlib import Path

from ferry.agent.config import AgentConfig
from ferry.coordinator.config import CoordinatorConfig
from ferry.runtime.config import load_toml

SYSTEMD = Path(__file__).parents[2] / "systemd"


def test_example_agent_config_parses():
    config = load_toml(SYSTEMD / "agent.toml.example", AgentConfig)
    assert config.host == "hv1" and config.hypervisor.backend == "libvirt"
    assert config.health.probe_dir == "/etc/ferry/probes.d" and config.health.probe_timeout == 10.0
    # The example shows the transport rules at their (safe) defaults.
    assert config.migration.require_tls is True and config.migration.allowed_peer_schemes == ["qemu+tls"]


def test_example_coordinator_config_parses():
    assert load_toml(SYSTEMD / "coordinator.toml.example", CoordinatorConfig).heartbeat_timeout == 0


def test_example_coordinator_config_shows_the_defaults():
    example = load_toml(SYSTEMD / "coordinator.toml.example", CoordinatorConfig)
    defaults = CoordinatorConfig()
    assert (example.limits, example.drain, example.evacuation, example.leader, example.kv_replicas) == (
        defaults.limits, defaults.drain, defaults.evacuation, defaults.leader, defaults.kv_replicas
    )


def test_units_do_not_restart_a_daemon_whose_config_cannot_work():
    from ferry.runtime.daemon import EXIT_BAD_CONFIG

    for unit in ("ferry-agent.service", "ferry-coordinator.service"):
        lines = (SYSTEMD / unit).read_text().splitlines()
        assert f"RestartPreventExitStatus={EXIT_BAD_CONFIG}" in lines, unit
        assert "Restart=always" in lines, unit
