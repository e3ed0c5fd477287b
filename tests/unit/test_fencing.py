"""Fence agents run as fence-agents expect, and a host is fenced only when its device says off."""

import stat
from pathlib import Path

import pytest

from ferry.coordinator.fencing import FenceDevice, device_problem, fence_off, find_agent, stdin_of

# A fence device of our own: its "host" is a file saying on or off.
FAKE = """#!/bin/sh
opts=$(cat)
echo "$opts" >> {dir}/seen
action=$(echo "$opts" | sed -n 's/^action=//p')
power={dir}/power
case "$action" in
  off) {off} ;;
  status) {status} ;;
  *) exit 1 ;;
esac
"""
WORKS = {"off": 'echo off > "$power"; echo "Success: Powered OFF"', "status": 'grep -q off "$power" && exit 2; exit 0'}


def agent(tmp_path: Path, name: str = "fence_fake", **behaviour: str) -> tuple[FenceDevice, tuple[str, ...]]:
    folder = tmp_path / "sbin"
    folder.mkdir(exist_ok=True)
    (tmp_path / "power").write_text("on\n")
    program = folder / name
    program.write_text(FAKE.format(dir=tmp_path, **{**WORKS, **behaviour}))
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    device = FenceDevice(agent=name, options={"plug": "hv1", "password": "s3cret"}, run_timeout=2.0, power_timeout=1.0,
                         status_every=0.1)
    return device, (str(folder),)


async def test_a_host_is_fenced_when_the_status_after_off_says_off(tmp_path):
    device, folders = agent(tmp_path)
    result = await fence_off("hv1", device, folders)
    assert result.confirmed_off and result.reason == "fence_fake confirms hv1 is off"
    assert [(r.action, r.code) for r in result.runs] == [("off", 0), ("status", 2)]
    assert (tmp_path / "seen").read_text().split("\n")[:3] == ["action=off", "password=s3cret", "plug=hv1"]


async def test_an_off_that_fails_fences_nothing(tmp_path):
    device, folders = agent(tmp_path, off='echo "Failed: Unable to connect" >&2; exit 1')
    result = await fence_off("hv1", device, folders)
    assert not result.confirmed_off
    assert result.reason == "fence_fake action=off failed (exit 1: Failed: Unable to connect)"


async def test_an_off_that_is_not_confirmed_fences_nothing(tmp_path):
    device, folders = agent(tmp_path, off="exit 0")
    result = await fence_off("hv1", device, folders)
    assert not result.confirmed_off and len(result.runs) > 3
    assert result.reason == "fence_fake did not confirm hv1 off within 1 s (last status: on)"


async def test_an_agent_that_hangs_is_killed_and_fences_nothing(tmp_path):
    device, folders = agent(tmp_path, off="sleep 30")
    result = await fence_off("hv1", device, folders)
    assert not result.confirmed_off and result.runs[0].code is None and result.seconds < 10
    assert result.reason == "fence_fake action=off failed (no answer: no answer within 2 s)"


async def test_a_chatty_agent_is_read_to_the_end_and_kept_short(tmp_path):
    device, folders = agent(tmp_path, off='head -c 5000000 /dev/zero | tr "\\\\0" x; echo; echo off > "$power"')
    result = await fence_off("hv1", device, folders)
    assert result.confirmed_off and len(result.runs[0].output) <= 64 * 1024


async def test_an_agent_not_installed_is_said(tmp_path):
    device, folders = agent(tmp_path)
    result = await fence_off("hv1", FenceDevice(agent="fence_nothere"), folders)
    assert not result.confirmed_off and result.reason == f"fence agent fence_nothere is not installed in {folders[0]}"


@pytest.mark.parametrize(
    "device, problem",
    [
        (FenceDevice(agent="/bin/sh"), "fence agent '/bin/sh' is not a fence-agents program name (fence_...)"),
        (FenceDevice(agent="fence_x;reboot"), "fence agent 'fence_x;reboot' is not a fence-agents program name (fence_...)"),
        (FenceDevice(agent="fence_x", options={"action": "on"}), "option action is Ferry's to set (off, then status)"),
        (FenceDevice(agent="fence_x", options={"plug": "hv1\naction=reboot"}), "fence option plug holds a line break or a NUL"),
        (FenceDevice(agent="fence_x", options={"Plug Name": "hv1"}), "fence option name 'Plug Name' is not a plain lower-case name"),
        (FenceDevice(agent="fence_x", run_timeout=0), "fence timeouts must be positive (run_timeout <= 600 s, "
         "power_timeout <= 3600 s, status_every <= 60 s)"),
        (FenceDevice(agent="fence_ipmilan", options={"ip": "10.0.0.9", "lanplus": "1"}), None),
    ],
)
def test_a_device_is_checked_before_anything_runs(device, problem):
    assert device_problem(device) == problem


def test_options_go_one_per_line_with_the_action_first():
    device = FenceDevice(agent="fence_ipmilan", options={"ip": "10.0.0.9", "username": "admin"})
    assert stdin_of(device, "status") == b"action=status\nip=10.0.0.9\nusername=admin\n"
    assert find_agent("../fence_x") is None
