"""fence_lab reads its options as fence-agents do and answers with their exit codes."""

from ferry.lab.fence_lab import EXIT_FAILED, EXIT_ON, main, read_options, run


def test_options_come_as_name_value_lines():
    assert read_options("# from Ferry\naction=off\n\nplug = hv1\nlab_dir=/tmp/x=y\nnonsense\n") == {
        "action": "off", "plug": "hv1", "lab_dir": "/tmp/x=y"
    }


def test_an_unknown_action_or_a_missing_lab_is_an_error_not_off(tmp_path, capsys):
    assert run({"action": "reboot", "plug": "hv1"}) == (EXIT_FAILED, "fence_lab: action 'reboot' is not one of off, on, status, monitor, metadata")
    code, said = run({"action": "status", "plug": "hv1", "lab_dir": str(tmp_path / "none")})
    assert code == EXIT_FAILED and said.startswith("fence_lab: ")
    assert main(["-o", "status", "-n", "hv1", "--lab-dir", str(tmp_path / "none")]) == EXIT_FAILED
    assert "fence_lab: " in capsys.readouterr().err


def test_metadata_describes_the_agent():
    code, said = run({"action": "metadata"})
    assert code == EXIT_ON and '<resource-agent name="fence_lab"' in said and '<action name="status"/>' in said
