"""Fencing: power a lost host off through its fence device, and be sure it is off.

Fence agents follow the fence-agents convention (ClusterLabs' FenceAgentAPI,
as `fence_ipmilan`, `fence_redfish`, ... do): the options go to the agent's
stdin as `name=value` lines, `action=off` powers the host off, and
`action=status` answers by its exit status: 0 on, 2 off, anything else a
failure. A host counts as fenced only when a status after the off says off:
an `off` that returned 0 is a request, not a proof.

The agent is a bare program name looked up in the configured folders, never
a path from a message; an option value cannot hold a line break (it would
smuggle in another option).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

# fence-agents' status exit codes.
STATUS_ON = 0
STATUS_OFF = 2
# Where fence agents live on Debian (package fence-agents) and where Ferry's own go.
DEFAULT_FENCE_DIRS = ("/usr/sbin", "/usr/local/sbin")
AGENT_NAME = re.compile(r"fence_[A-Za-z0-9_]{1,64}")
OPTION_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
# What an agent may print before it is cut off (a chatty one must not fill memory).
OUTPUT_LIMIT = 64 * 1024


class FenceDevice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How one host is powered off: `agent` (e.g. "fence_ipmilan") and its options
    (ip, username, password, plug, ...), as a Pacemaker stonith resource has them."""

    agent: str
    options: dict[str, str] = {}
    # Seconds for one run of the agent, and for the host to show off after `off`.
    run_timeout: float = 30.0
    power_timeout: float = 60.0
    # Seconds between status checks while waiting for off.
    status_every: float = 1.0


def device_problem(device: FenceDevice) -> str | None:
    """Why this device cannot be used (a sentence), or None."""
    if not AGENT_NAME.fullmatch(device.agent):
        return f"fence agent {device.agent!r} is not a fence-agents program name (fence_...)"
    for name, value in device.options.items():
        if name == "action":
            return "option action is Ferry's to set (off, then status)"
        if not OPTION_NAME.fullmatch(name):
            return f"fence option name {name!r} is not a plain lower-case name"
        if "\n" in value or "\r" in value or "\0" in value:
            return f"fence option {name} holds a line break or a NUL"
    if not (0 < device.run_timeout <= 600 and 0 < device.power_timeout <= 3600 and 0 < device.status_every <= 60):
        return "fence timeouts must be positive (run_timeout <= 600 s, power_timeout <= 3600 s, status_every <= 60 s)"
    return None


def stdin_of(device: FenceDevice, action: str) -> bytes:
    """The agent's input: one `name=value` per line, the action first."""
    lines = [f"action={action}", *(f"{name}={value}" for name, value in sorted(device.options.items()))]
    return ("\n".join(lines) + "\n").encode()


def find_agent(name: str, folders: tuple[str, ...] = DEFAULT_FENCE_DIRS) -> Path | None:
    """The agent's executable in the first folder that has it."""
    if not AGENT_NAME.fullmatch(name):
        return None
    for folder in folders:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class AgentRun:
    action: str
    code: int | None  # None: it did not finish in time (it was killed)
    output: str
    seconds: float


@dataclass
class FenceResult:
    host: str
    confirmed_off: bool
    reason: str
    runs: list[AgentRun] = field(default_factory=list)
    seconds: float = 0.0


async def run_agent(program: Path, device: FenceDevice, action: str) -> AgentRun:
    """One run of the agent, killed (with what it started) past `run_timeout`."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(program), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output = await asyncio.wait_for(_talk(proc, stdin_of(device, action)), device.run_timeout)
    except TimeoutError:
        # Its own session: the group goes, with whatever the agent started (a
        # child holding the output pipe open would keep us waiting).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        return AgentRun(action, None, f"no answer within {device.run_timeout:g} s", time.monotonic() - started)
    return AgentRun(action, proc.returncode, output.decode(errors="replace").strip(), time.monotonic() - started)


async def _talk(proc: asyncio.subprocess.Process, given: bytes) -> bytes:
    """Feed stdin, keep the first OUTPUT_LIMIT bytes of output (the rest is read and
    dropped: a chatty agent neither blocks nor fills memory), wait for the exit."""
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(given)
        await proc.stdin.drain()
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # it did not read its options: its exit status says what it made of that
    kept = bytearray()
    while chunk := await proc.stdout.read(65536):
        if len(kept) < OUTPUT_LIMIT:
            kept += chunk[: OUTPUT_LIMIT - len(kept)]
    await proc.wait()
    return bytes(kept)


async def fence_off(host: str, device: FenceDevice, folders: tuple[str, ...] = DEFAULT_FENCE_DIRS) -> FenceResult:
    """Power `host` off and wait for its device to say it is off (`power_timeout`)."""
    started = time.monotonic()
    problem = device_problem(device)
    if problem is not None:
        return FenceResult(host, False, problem)
    program = find_agent(device.agent, folders)
    if program is None:
        return FenceResult(host, False, f"fence agent {device.agent} is not installed in {', '.join(folders)}")
    result = FenceResult(host, False, "")
    off = await run_agent(program, device, "off")
    result.runs.append(off)
    if off.code != 0:
        result.reason = f"{device.agent} action=off failed ({_said(off)})"
    else:
        deadline = started + device.power_timeout
        while True:
            status = await run_agent(program, device, "status")
            result.runs.append(status)
            if status.code == STATUS_OFF:
                result.confirmed_off, result.reason = True, f"{device.agent} confirms {host} is off"
                break
            if time.monotonic() + device.status_every > deadline:
                result.reason = (
                    f"{device.agent} did not confirm {host} off within {device.power_timeout:g} s "
                    f"(last status: {_said(status)})"
                )
                break
            await asyncio.sleep(device.status_every)
    result.seconds = time.monotonic() - started
    return result


def _said(run: AgentRun) -> str:
    what = "no answer" if run.code is None else {STATUS_ON: "on", STATUS_OFF: "off"}.get(run.code, f"exit {run.code}")
    if run.action != "status" and run.code is not None:
        what = f"exit {run.code}"
    return f"{what}: {run.output.splitlines()[-1]}" if run.output else what
