"""Executable health probes: the Nagios judgement, the folder listing, real tiny scripts."""

import asyncio
import os
import time
from pathlib import Path

import pytest

from ferry.agent.config import HealthSettings, SimulatedHost
from ferry.agent.health import probe_host
from ferry.agent.hypervisor.simulated import SimulatedHypervisor
from ferry.agent.probes import (
    MAX_MESSAGE_CHARS,
    install_probe,
    judge_plugin,
    list_probes,
    run_probes,
)
from ferry.proto.host import HealthCheck, HealthState

OK, WARNING, CRITICAL = HealthState.OK, HealthState.WARNING, HealthState.CRITICAL


@pytest.mark.parametrize(
    "code, output, state, message",
    [
        (0, "OK - raid clean\n", OK, "OK - raid clean"),
        (1, "WARNING - 1 of 4 paths down", WARNING, "WARNING - 1 of 4 paths down"),
        (2, "disk array degraded\n", CRITICAL, "disk array degraded"),
        (2, "CRITICAL - load 31 | load1=31;8;16 load5=20\n", CRITICAL, "CRITICAL - load 31"),
        (0, "first line\nsecond line\nthird | x=1\n", OK, "first line"),
        (0, "\n\n   padded line   \nnext\n", OK, "padded line"),
        (0, "| only=1", OK, "probe raid exited 0 with no output"),
        (0, "", OK, "probe raid exited 0 with no output"),
        (2, "", CRITICAL, "probe raid exited 2 with no output"),
        (3, "UNKNOWN - cannot read /proc/mdstat\n", WARNING, "probe raid state is unknown (UNKNOWN): UNKNOWN - cannot read /proc/mdstat"),
        (3, "", WARNING, "probe raid state is unknown (UNKNOWN)"),
        (7, "oops | a=1\n", WARNING, "probe raid state is unknown (unexpected exit code 7): oops"),
        (-9, "", WARNING, "probe raid state is unknown (unexpected exit code -9)"),
        (255, "bad", WARNING, "probe raid state is unknown (unexpected exit code 255): bad"),
    ],
)
def test_exit_codes_follow_the_nagios_convention(code, output, state, message):
    assert judge_plugin("raid", code, output) == HealthCheck("probe:raid", state, message)


def test_a_timed_out_probe_is_a_warning_naming_the_timeout():
    check = judge_plugin("raid", None, "", timed_out=True, timeout=2.5)
    assert check == HealthCheck("probe:raid", WARNING, "probe raid timed out after 2.5 s")


def test_timed_out_wins_over_an_exit_code():
    assert judge_plugin("raid", 2, "CRITICAL", timed_out=True, timeout=10).state == WARNING


def test_a_probe_that_could_not_start_is_a_warning_with_the_error():
    check = judge_plugin("raid", None, "Exec format error")
    assert check == HealthCheck("probe:raid", WARNING, "probe raid could not start: Exec format error")


def test_a_long_first_line_is_cut():
    check = judge_plugin("raid", 2, "x" * 1000 + "\nmore")
    assert check.state == CRITICAL
    assert len(check.message) == MAX_MESSAGE_CHARS and check.message.endswith("...")


def test_a_line_of_exactly_the_limit_is_kept_whole():
    assert judge_plugin("raid", 0, "y" * MAX_MESSAGE_CHARS).message == "y" * MAX_MESSAGE_CHARS


def make_file(folder: Path, name: str, mode: int = 0o755) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


def test_missing_folder_has_no_probes(tmp_path):
    assert list_probes(tmp_path / "nope") == []


def test_a_file_instead_of_a_folder_is_an_error_not_silence(tmp_path):
    make_file(tmp_path, "not-a-folder")
    with pytest.raises(NotADirectoryError):
        list_probes(tmp_path / "not-a-folder")


def test_list_probes_keeps_executables_in_name_order_and_skips_leftovers(tmp_path):
    for name in ["20-raid", "10-multipath", "check_ntp.sh", "Zeta"]:
        make_file(tmp_path, name)
    for name in [".hidden", "raid~", "raid.dpkg-old", "raid.dpkg-dist", "raid.rpmnew", "raid.rpmsave",
                 "raid.bak", "raid.disabled"]:
        make_file(tmp_path, name)
    make_file(tmp_path, "readme.txt", mode=0o644)
    (tmp_path / "subdir").mkdir()
    (tmp_path / "subdir").chmod(0o755)
    (tmp_path / "broken-link").symlink_to(tmp_path / "missing")
    (tmp_path / "linked").symlink_to(tmp_path / "20-raid")
    assert [p.name for p in list_probes(tmp_path)] == ["10-multipath", "20-raid", "Zeta", "check_ntp.sh", "linked"]


def test_list_probes_accepts_a_string(tmp_path):
    make_file(tmp_path, "a")
    assert list_probes(str(tmp_path)) == [tmp_path / "a"]


async def test_scripts_are_judged_by_exit_code_and_first_line(tmp_path):
    install_probe(tmp_path, "c0-ok", "echo 'OK - fine | t=1'")
    install_probe(tmp_path, "c1-warn", "echo 'WARNING - slow'; exit 1")
    install_probe(tmp_path, "c2-crit", "printf 'disk array degraded\\nmd0: 1 of 2 failed\\n'; exit 2")
    install_probe(tmp_path, "c3-unknown", "echo 'UNKNOWN - no mdstat'; exit 3")
    install_probe(tmp_path, "c7-odd", "exit 7")
    install_probe(tmp_path, "stderr", "echo 'to stderr' >&2; exit 1")
    checks = await run_probes(tmp_path, timeout=5)
    assert checks == [
        HealthCheck("probe:c0-ok", OK, "OK - fine"),
        HealthCheck("probe:c1-warn", WARNING, "WARNING - slow"),
        HealthCheck("probe:c2-crit", CRITICAL, "disk array degraded"),
        HealthCheck("probe:c3-unknown", WARNING, "probe c3-unknown state is unknown (UNKNOWN): UNKNOWN - no mdstat"),
        HealthCheck("probe:c7-odd", WARNING, "probe c7-odd state is unknown (unexpected exit code 7)"),
        HealthCheck("probe:stderr", WARNING, "to stderr"),
    ]


async def test_probes_see_the_host_name_and_no_stdin(tmp_path):
    install_probe(tmp_path, "env", 'read line; echo "host=$FERRY_HOST read=$?"')
    assert (await run_probes(tmp_path, timeout=5, host="hv7"))[0].message == "host=hv7 read=1"


async def test_a_hanging_probe_times_out_alone_and_its_children_die(tmp_path):
    marker = tmp_path / "child.pid"
    probes = tmp_path / "probes"
    probes.mkdir()
    install_probe(probes, "hang", f"sleep 30 & echo $! > {marker}; sleep 30")
    install_probe(probes, "quick", "echo fine")
    started = time.monotonic()
    checks = await run_probes(probes, timeout=0.5)
    assert time.monotonic() - started < 3
    assert checks == [
        HealthCheck("probe:hang", WARNING, "probe hang timed out after 0.5 s"),
        HealthCheck("probe:quick", OK, "fine"),
    ]
    child = int(marker.read_text())
    deadline = time.monotonic() + 2  # SIGKILL is sent; its delivery takes a moment
    while _alive(child) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not _alive(child), "the probe's background child outlived the timeout"


async def test_a_probe_that_leaves_a_child_holding_the_pipe_times_out(tmp_path):
    install_probe(tmp_path, "daemonizes", "sleep 30 & echo started")
    checks = await run_probes(tmp_path, timeout=0.5)
    assert checks == [HealthCheck("probe:daemonizes", WARNING, "probe daemonizes timed out after 0.5 s")]


async def test_a_script_without_interpreter_line_could_not_start(tmp_path):
    path = tmp_path / "noshebang"
    path.write_bytes(b"\x00\x01 not a program")
    path.chmod(0o755)
    [check] = await run_probes(tmp_path, timeout=5)
    assert check.name == "probe:noshebang" and check.state == WARNING
    assert check.message.startswith("probe noshebang could not start: ")


async def test_non_executable_files_are_not_run(tmp_path):
    install_probe(tmp_path, "runs", "exit 2")
    (tmp_path / "notes.txt").write_text("#!/bin/sh\nexit 2\n")
    assert [c.name for c in await run_probes(tmp_path, timeout=5)] == ["probe:runs"]


async def test_missing_folder_runs_nothing_and_an_unreadable_one_is_a_warning(tmp_path):
    assert await run_probes(tmp_path / "nope", timeout=5) == []
    (tmp_path / "file").write_text("")
    [check] = await run_probes(tmp_path / "file", timeout=5)
    assert check.name == "probes" and check.state == WARNING and str(tmp_path / "file") in check.message


async def test_huge_output_is_read_to_the_end_and_cut(tmp_path):
    install_probe(tmp_path, "chatty", "head -c 3000000 /dev/zero | tr '\\0' 'a'; echo; exit 1")
    [check] = await run_probes(tmp_path, timeout=10)
    assert check.state == WARNING and len(check.message) == MAX_MESSAGE_CHARS


async def test_probe_host_adds_plugin_checks_after_the_built_in_ones(tmp_path):
    probes = tmp_path / "probes"
    probes.mkdir()
    install_probe(probes, "raid", "echo 'disk array degraded'; exit 2")
    hv = SimulatedHypervisor("hv1", SimulatedHost())
    probe = await probe_host(hv, str(tmp_path), HealthSettings(), plugins=lambda: run_probes(probes, 5))
    assert [c.name for c in probe.checks] == ["hypervisor", "memory", "images_disk", "probe:raid"]
    assert probe.state == CRITICAL


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; its parent (the probe's shell) is gone too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
