"""Start daemons detached from the caller, find them again by pid, stop them.

A pid alone can be reused by an unrelated process after a reboot or a long
time; a pid plus the process's start time (from /proc) cannot, so the lab only
ever signals a process whose start time still matches what it recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from ferry.lab.errors import LabError


class ProcessRef(msgspec.Struct, frozen=True):
    pid: int
    start_time: int  # clock ticks after boot, field 22 of /proc/<pid>/stat


def start_time_of(pid: int) -> int | None:
    """The process's start time, or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def ref_of(pid: int) -> ProcessRef | None:
    started = start_time_of(pid)
    return None if started is None else ProcessRef(pid, started)


def is_running(ref: ProcessRef | None) -> bool:
    return ref is not None and start_time_of(ref.pid) == ref.start_time


def spawn_detached(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> ProcessRef:
    """Start ``argv`` as a daemon that outlives the caller; output goes to ``log``.

    A short-lived shell starts it in the background and exits, so the daemon is
    re-parented to init at once: it never becomes a zombie of the caller (a test
    process or the CLI), whoever stops it later.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    launcher = subprocess.run(
        ["sh", "-c", 'log="$1"; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!', "sh", str(log), *argv],
        capture_output=True,
        text=True,
        env=env,
        start_new_session=True,  # Ctrl-C in the caller's terminal must not reach the daemon
        check=False,
    )
    if launcher.returncode != 0 or not launcher.stdout.strip().isdigit():
        raise LabError(f"Could not start {argv[0]}: {launcher.stderr.strip() or 'the launcher shell failed'}.")
    pid = int(launcher.stdout.strip())
    ref = ref_of(pid)
    if ref is None:
        raise LabError(f"{Path(argv[0]).name} exited at once; see {log}: {last_line(log)}")
    return ref


def stop(ref: ProcessRef | None, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``. Returns whether it was running."""
    if not is_running(ref):
        return False
    assert ref is not None
    _signal(ref, signal.SIGTERM)
    if wait_gone(ref, timeout):
        return True
    _signal(ref, signal.SIGKILL)
    if not wait_gone(ref, 5.0):
        raise LabError(f"Process {ref.pid} survived SIGKILL; it may be stuck in the kernel (state D).")
    return True


def wait_gone(ref: ProcessRef, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_running(ref):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _signal(ref: ProcessRef, signum: int) -> None:
    if is_running(ref):
        try:
            os.kill(ref.pid, signum)
        except ProcessLookupError:
            pass


def all_pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def cmdline_of(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pids_with_mounts_from(folder: Path) -> list[int]:
    """Processes that see a mount whose source lies in ``folder``.

    These are the processes inside a lab host's mount namespace (libvirtd, its
    QEMUs and anything they started): field 4 of mountinfo is the bind
    mount's source path. When none is left, the namespaces are gone too.
    """
    prefix = _mount_source_prefix(folder)
    return [pid for pid in all_pids() if pid != os.getpid() and _sees_mounts_under(pid, prefix)]


def sees_mounts_from(pid: int, folder: Path) -> bool:
    """Whether the (live) process sees a mount whose source lies in ``folder``: it runs
    inside a namespace of the lab's hosts under that folder."""
    return _sees_mounts_under(pid, _mount_source_prefix(folder))


def _mount_source_prefix(folder: Path) -> str:
    return str(folder.resolve()).rstrip("/") + "/"


def _sees_mounts_under(pid: int, prefix: str) -> bool:
    try:
        mountinfo = Path(f"/proc/{pid}/mountinfo").read_text()
    except OSError:
        return False
    seen = any(line.split(" ", 4)[3].startswith(prefix) for line in mountinfo.splitlines())
    return seen and start_time_of(pid) is not None


def last_line(path: Path, lines: int = 1) -> str:
    """The last non-empty lines of a log, for error sentences."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log written)"
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail) if tail else "(log is empty)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    # The command name (field 2) may hold spaces; count fields after its ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB (0 when /proc does not say)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
