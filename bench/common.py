"""What the benchmarks share: a lab folder of their own, timed commands, waiting, figures."""

from __future__ import annotations

import asyncio
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

import libvirt

from coordinator.client import FerryClient
from lab import processes
from lab.errors import LabError
from lab.lab import Lab
from lab.layout import STATE_FILE_NAME, HostLayout
from lab.libvirt_conn import open_host
from lab.state import load_state
from proto.api import HostsReply, HostState
from proto.errors import FerryError
from proto.host import VmState
from runtime.config import NatsSettings

T = TypeVar("T")

# The console scripts installed next to the interpreter that runs the benchmark.
FERRY = str(Path(sys.executable).parent / "ferry")
VIRSH = shutil.which("virsh") or "virsh"


class BenchError(Exception):
    """A benchmark could not measure what it set out to; the message is one sentence."""


# ---- the lab folder ------------------------------------------------------------


def clear_old_lab(dir: Path) -> None:
    """Remove what an earlier run left in ``dir``; refuse when anything there still runs.

    A lab left running (``--keep``) is not stopped here: the benchmark only
    stops processes it started itself in this run.
    """
    dir = dir.absolute()
    if not dir.exists():
        return
    try:
        state = load_state(dir / STATE_FILE_NAME)
    except LabError as error:
        raise BenchError(str(error)) from None
    running = [role for role, ref in (state.processes.items() if state else ()) if processes.is_running(ref)]
    if running or processes.pids_with_mounts_from(dir):
        what = ", ".join(running) or "processes inside its hosts' namespaces"
        raise BenchError(
            f"A lab still runs in {dir} ({what}); stop it with `ferry-lab --dir {dir} down` or pick another --dir."
        )
    if state is None and any(dir.iterdir()):
        raise BenchError(f"{dir} holds files but no lab ({STATE_FILE_NAME} is missing); remove it or pick another --dir.")
    if mounted := _mounts_under(dir):
        raise BenchError(f"{mounted[0]} is still mounted inside {dir}; unmount it or pick another --dir.")
    shutil.rmtree(dir)


def _mounts_under(dir: Path) -> list[str]:
    prefix = str(dir.resolve()).rstrip("/") + "/"
    text = Path("/proc/self/mountinfo").read_text()
    return [point for line in text.splitlines() if (point := line.split(" ")[4]).startswith(prefix)]


# ---- running commands ------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    seconds: float
    stdout: str
    stderr: str


def run_timed(argv: Sequence[str], what: str, timeout: float) -> Timed:
    """Run a command and time it with a monotonic clock; raises BenchError unless it exits 0."""
    started = time.monotonic()
    try:
        out = subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} did not finish within {timeout:.0f} s.") from None
    except OSError as error:
        raise BenchError(f"{what} could not start: {error}.") from None
    seconds = time.monotonic() - started
    if out.returncode != 0:
        detail = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()[-1]
        raise BenchError(f"{what} failed with exit status {out.returncode}: {detail}")
    return Timed(seconds, out.stdout, out.stderr)


def wait_until(check: Callable[[], T | None], what: str, timeout: float, interval: float = 0.2) -> T:
    """Calls ``check`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"Waited {timeout:.0f} s for {what}, in vain.")
        time.sleep(interval)


# ---- libvirt and the coordinator ---------------------------------------------------


def completed_job_stats(host: HostLayout, guest: str) -> dict[str, int | float]:
    """The statistics of the guest's last finished job on ``host`` (left in place for others)."""
    flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
    with open_host(host) as conn:
        try:
            return conn.lookupByName(guest).jobStats(flags)
        except libvirt.libvirtError:
            return {}


def coordinator_hosts(lab: Lab, timeout: float = 5.0) -> HostsReply | None:
    """What ``ferry hosts`` shows; None while the coordinator does not answer."""

    async def ask() -> HostsReply:
        settings = NatsSettings(servers=[lab.nats_url], request_timeout=timeout)
        async with await FerryClient.connect(settings) as client:
            return await client.hosts()

    try:
        return asyncio.run(ask())
    except FerryError:
        return None


def all_hosts_up(lab: Lab) -> HostsReply | None:
    reply = coordinator_hosts(lab)
    if reply is None:
        return None
    states = {h.host: h.state for h in reply.hosts}
    if all(states.get(h.name) == HostState.UP for h in lab.hosts):
        return reply
    return None


def coordinator_sees(lab: Lab, guest: str, host: str) -> bool:
    """The coordinator sees ``guest`` running on ``host`` alone, with no migration in flight."""
    reply = coordinator_hosts(lab)
    if reply is None:
        return False
    running = [h.host for h in reply.hosts for vm in h.vms if vm.name == guest and vm.state == VmState.RUNNING]
    return running == [host] and all(h.migrations_in_flight == 0 for h in reply.hosts)


# ---- figures --------------------------------------------------------------------


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


# ---- signals ----------------------------------------------------------------------


def sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so the ``finally`` that stops the lab runs."""

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


class Uninterrupted:
    """Holds off SIGINT and SIGTERM while the lab is being stopped (they would leave it half down)."""

    def __enter__(self) -> Self:
        self._saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
