"""Health probes as executables in a folder, judged by the Nagios plugin convention.

Exit 0 is OK, 1 WARNING, 2 CRITICAL; the first line of output is the message.
A probe that cannot tell (exit 3, UNKNOWN, or any other code), hangs or cannot
start is a WARNING, never CRITICAL: a broken probe must not evacuate a host.
`judge_plugin` and `is_probe_name` decide; `list_probes` and `run_probes` do the I/O.
"""

import asyncio
import contextlib
import os
import re
import signal
from pathlib import Path

from ferry.proto.host import HealthCheck, HealthState

CHECK_PREFIX = "probe:"
# The heartbeat carries every message: keep each one a line, not a report.
MAX_MESSAGE_CHARS = 200
# Output kept per run; the rest is read and dropped so a chatty probe cannot block on its pipe.
MAX_OUTPUT_BYTES = 64 * 1024

_EXIT_STATES = {0: HealthState.OK, 1: HealthState.WARNING, 2: HealthState.CRITICAL}
# Left behind by editors and package managers; run-parts skips the same kind of names.
_SKIPPED_NAME = re.compile(r"(^\.|~$|\.dpkg-[^.]*$|\.rpm[^.]*$|\.bak$|\.disabled$)")


def check_name(filename: str) -> str:
    return f"{CHECK_PREFIX}{filename}"


def first_line(output: str) -> str:
    """The status line: first non-blank line, without perf data after `|`, at most MAX_MESSAGE_CHARS."""
    lines = output.strip().splitlines()
    line = lines[0].split("|", 1)[0].strip() if lines else ""
    if len(line) > MAX_MESSAGE_CHARS:
        line = line[: MAX_MESSAGE_CHARS - 3].rstrip() + "..."
    return line


def judge_plugin(
    name: str,
    exit_code: int | None,
    output: str,
    *,
    timed_out: bool = False,
    timeout: float = 10.0,
) -> HealthCheck:
    """One probe run as a check named `probe:<name>`.

    `exit_code` None means the probe did not start; `output` then holds the error.
    """
    check = check_name(name)
    if timed_out:
        return HealthCheck(check, HealthState.WARNING, f"probe {name} timed out after {timeout:g} s")
    if exit_code is None:
        reason = output.strip() or "unknown error"
        return HealthCheck(check, HealthState.WARNING, f"probe {name} could not start: {reason}")
    line = first_line(output)
    state = _EXIT_STATES.get(exit_code)
    if state is None:
        why = "UNKNOWN" if exit_code == 3 else f"unexpected exit code {exit_code}"
        message = f"probe {name} state is unknown ({why})"
        return HealthCheck(check, HealthState.WARNING, f"{message}: {line}" if line else message)
    return HealthCheck(check, state, line or f"probe {name} exited {exit_code} with no output")


def is_probe_name(filename: str) -> bool:
    return _SKIPPED_NAME.search(filename) is None


def list_probes(folder: str | Path) -> list[Path]:
    """Executable regular files (or links to them) in `folder`, by name; a missing folder has none.

    Other errors (a file instead of a folder, no permission) are raised: a
    misconfigured folder must show, not look like a host without probes.
    """
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    found = [
        Path(entry.path)
        for entry in entries
        if is_probe_name(entry.name) and entry.is_file() and os.access(entry.path, os.X_OK)
    ]
    return sorted(found, key=lambda p: p.name)


async def run_probes(folder: str | Path, timeout: float, *, host: str = "") -> list[HealthCheck]:
    """Run every probe in `folder` at once, each under its own `timeout`; checks in name order."""
    try:
        probes = await asyncio.to_thread(list_probes, folder)
    except OSError as exc:
        return [HealthCheck("probes", HealthState.WARNING, f"cannot list probe folder {folder}: {exc.strerror or exc}")]
    env = {**os.environ, "FERRY_HOST": host}
    async with asyncio.TaskGroup() as tg:
        runs = [tg.create_task(_run_one(path, timeout, env)) for path in probes]
    return [run.result() for run in runs]


async def _run_one(path: Path, timeout: float, env: dict[str, str]) -> HealthCheck:
    try:
        proc = await asyncio.create_subprocess_exec(
            str(path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            # Its own process group, so a timeout kills the probe and everything it started.
            start_new_session=True,
        )
    except OSError as exc:
        return judge_plugin(path.name, None, exc.strerror or str(exc))
    finished = False
    try:
        async with asyncio.timeout(timeout):
            output = await _read_output(proc)
            code = await proc.wait()
        finished = True
    except TimeoutError:
        return judge_plugin(path.name, None, "", timed_out=True, timeout=timeout)
    finally:
        if not finished:
            # Timed out or the agent is stopping. The whole group, even when the probe
            # itself has exited: a child it left behind may hold the pipe open.
            _kill_group(proc.pid)
            # Read the pipe to its end too, so the transport closes with the process
            # (left open, it is torn down later, after its loop may be gone).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await proc.communicate()
            await proc.wait()
    return judge_plugin(path.name, code, output.decode(errors="replace"))


async def _read_output(proc: asyncio.subprocess.Process) -> bytes:
    assert proc.stdout is not None
    kept = bytearray()
    while chunk := await proc.stdout.read(65536):
        kept += chunk[: max(0, MAX_OUTPUT_BYTES - len(kept))]
    return bytes(kept)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def install_probe(folder: Path | str, name: str, body: str) -> Path:
    """Write `#!/bin/sh` + `body` as an executable probe, atomically.

    Written under a hidden name (the agent skips those) and renamed into place:
    the agent never runs a half-written script nor hits "Text file busy".
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    staging = folder / f".{name}.tmp"
    staging.write_text(f"#!/bin/sh\n{body}\n")
    staging.chmod(0o755)
    os.replace(staging, path)
    return path
