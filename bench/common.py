"""What the benchmarks share: a lab of their own and its life cycle, timed
commands, the plain virsh baseline, waiting, figures and the JSON file."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import libvirt
from rich.console import Console

from ferry.cli.client import FerryClient
from ferry.lab import processes
from ferry.lab.errors import LabError
from ferry.lab.lab import Lab
from ferry.lab.layout import STATE_FILE_NAME, HostLayout
from ferry.lab.libvirt_conn import open_host
from ferry.lab.state import load_state
from ferry.proto.api import HostsReply, HostState
from ferry.proto.errors import FerryError
from ferry.proto.host import VmState

T = TypeVar("T")

# The console scripts installed next to the interpreter that runs the benchmark.
FERRY = str(Path(sys.executable).parent / "ferry")
VIRSH = shutil.which("virsh") or "virsh"
# The libvirt flags Ferry uses, as virsh options (Ferry adds ABORT_ON_ERROR,
# which costs nothing); lab/plain_migration.py moves guests the same way.
VIRSH_MIGRATE_FLAGS = ("--live", "--p2p", "--tls", "--persistent", "--undefinesource")
DEFAULT_DIR = Path("/var/tmp/ferry-bench")
# Its own address range, apart from the demo, developer labs and the tests.
DEFAULT_ADDRESS_BASE = "127.0.32"

# Tables to a file or a pipe keep their columns instead of wrapping at 80.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


class BenchError(Exception):
    """A benchmark could not measure what it set out to; the message is one sentence."""


# ---- the lab folder ------------------------------------------------------------


def clear_old_lab(dir: Path) -> None:
    """Remove what an earlier run left in ``dir``; refuse when anything there still runs.

    The benchmarks' result files (``*.json`` beside the lab's own state file)
    stay, so that ``make bench`` ends with every benchmark's results. A lab
    left running (``--keep``) is not stopped here: the benchmark only stops
    processes it started itself in this run.
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
    leftovers = [path for path in dir.iterdir() if not is_result_file(path)]
    if state is None and leftovers:
        raise BenchError(f"{dir} holds files but no lab ({STATE_FILE_NAME} is missing); remove it or pick another --dir.")
    if mounted := _mounts_under(dir):
        raise BenchError(f"{mounted[0]} is still mounted inside {dir}; unmount it or pick another --dir.")
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def is_result_file(path: Path) -> bool:
    """A benchmark's results (``overhead.json``, ``drain.json``, ...), not the lab's state file."""
    return path.suffix == ".json" and path.name != STATE_FILE_NAME and path.is_file() and not path.is_symlink()


def _mounts_under(dir: Path) -> list[str]:
    prefix = str(dir.resolve()).rstrip("/") + "/"
    text = Path("/proc/self/mountinfo").read_text()
    return [point for line in text.splitlines() if (point := line.split(" ")[4]).startswith(prefix)]


def add_lab_arguments(parser: argparse.ArgumentParser) -> None:
    """--dir, --address-base and --keep, the same for every benchmark."""
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"the benchmark's lab folder, cleared first except for results (default {DEFAULT_DIR})")
    parser.add_argument("--address-base", default=DEFAULT_ADDRESS_BASE, help=f"hosts get BASE.1, BASE.2, ... (default {DEFAULT_ADDRESS_BASE})")
    parser.add_argument("--keep", action="store_true", help="leave the lab running at the end")


def add_run_arguments(
    parser: argparse.ArgumentParser, *, rounds: int, rounds_help: str, memory: int, memory_help: str, dirty_mb: int, dirty_help: str
) -> None:
    """--rounds, --memory and --dirty-mb (each benchmark its own defaults), and the lab's options."""
    parser.add_argument("--rounds", type=int, default=rounds, help=f"{rounds_help} (default {rounds})")
    add_lab_arguments(parser)
    parser.add_argument("--memory", type=int, default=memory, metavar="MiB", help=f"{memory_help} (default {memory})")
    parser.add_argument("--dirty-mb", type=int, default=dirty_mb, metavar="MiB/s", help=f"{dirty_help} (default {dirty_mb})")


def parse_checked(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    checks: Callable[[argparse.Namespace], list[tuple[bool, str]]] = lambda _args: [],
) -> argparse.Namespace:
    """Parse, refuse what no benchmark can run with and what a benchmark's own
    `checks` (wrong, message) refuse, and make --dir absolute."""
    args = parser.parse_args(argv)
    shared = [
        (args.rounds < 1, "--rounds must be at least 1"),
        (args.memory < 64, "--memory must be at least 64 MiB"),
        (args.dirty_mb < 0, "--dirty-mb cannot be negative"),
    ]
    for wrong, message in [*shared, *checks(args)]:
        if wrong:
            parser.error(message)
    args.dir = args.dir.absolute()
    return args


def bring_up(lab: Lab, address_base: str) -> None:
    """Start every part of the lab, Ferry included, until the coordinator sees all hosts up."""
    console.print(f"starting a lab of {len(lab.hosts)} hosts at {address_base}.N with Ferry in {lab.dir} ...")
    report = lab.up(ferry=True)
    if not report.ok:
        raise BenchError("The lab did not start: " + "; ".join(f"{part}: {why}" for part, why in report.failed.items()))
    wait_until(lambda: all_hosts_up(lab), f"`ferry hosts` to show {len(lab.hosts)} hosts up", timeout=60)


def stop_lab(lab: Lab) -> int:
    console.print(f"stopping the lab in {lab.dir} ...")
    started = time.monotonic()
    try:
        lab.down()
    except LabError as error:
        console.print(f"[red]could not stop the lab:[/] {error}")
        return 1
    console.print(f"lab stopped in {time.monotonic() - started:.1f} s")
    return 0


def run_in_lab(args: argparse.Namespace, hosts: int, body: Callable[[Lab], None], save_partial: Callable[[str], None]) -> int:
    """Run ``body`` on a fresh lab of ``hosts`` hosts in args.dir, then stop the lab, whatever happens.

    Returns the exit status: 0 when ``body`` returned, 1 when the benchmark
    failed, 130 when interrupted (Ctrl-C or SIGTERM). On failure or interrupt,
    ``save_partial("failed" | "interrupted")`` may keep what was measured so
    far. The lab keeps running only with args.keep.
    """
    sigterm_as_interrupt()
    lab: Lab | None = None
    status = 0
    try:
        clear_old_lab(args.dir)
        lab = Lab.create(args.dir, hosts, args.address_base)
        body(lab)
    except (BenchError, LabError) as error:
        status = 1
        console.print(f"[red]bench failed:[/] {error}")
    except KeyboardInterrupt:
        status = 130
        console.print("[yellow]bench interrupted[/]")
    finally:
        with Uninterrupted():
            if status:
                try:
                    save_partial("interrupted" if status == 130 else "failed")
                except OSError:
                    pass
            if lab is not None:
                if args.keep:
                    console.print(f"the lab keeps running; stop it with `ferry-lab --dir {lab.dir} down`")
                else:
                    status = stop_lab(lab) or status
    return status


# ---- running commands ------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    seconds: float
    stdout: str
    stderr: str
    returncode: int = 0


def run_timed(argv: Sequence[str], what: str, timeout: float, accept: Collection[int] = (0,)) -> Timed:
    """Run a command and time it with a monotonic clock; raises BenchError unless its exit status is in ``accept``."""
    started = time.monotonic()
    try:
        out = subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} did not finish within {timeout:.0f} s.") from None
    except OSError as error:
        raise BenchError(f"{what} could not start: {error}.") from None
    seconds = time.monotonic() - started
    if out.returncode not in accept:
        raise BenchError(f"{what} failed with exit status {out.returncode}: {last_line(out.stderr, out.stdout)}")
    return Timed(seconds, out.stdout, out.stderr, out.returncode)


def last_line(*outputs: str) -> str:
    """The last line of the first output that has one: what a failed command said last."""
    text = next((o.strip() for o in outputs if o.strip()), "no output")
    return text.splitlines()[-1]


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


def virsh_migrate(lab: Lab, guest: str, source: str, dest: str, timeout: float) -> Timed:
    """``virsh migrate`` with VIRSH_MIGRATE_FLAGS on the source host; raises BenchError unless it exits 0."""
    argv = [VIRSH, "-c", lab.host(source).uri, "migrate", *VIRSH_MIGRATE_FLAGS, guest, lab.host(dest).peer_uri]
    return run_timed(argv, f"virsh migrate {guest} {source} -> {dest}", timeout)


def check_only_on(lab: Lab, guest: str, host: str) -> None:
    where = lab.residency(guest)[guest]
    if where.running_on != (host,) or where.active_on != (host,) or where.defined_on != (host,):
        raise BenchError(f"Before moving it from {host}, {where.explain()} (expected {host} alone).")


def completed_job_stats(host: HostLayout, guest: str) -> dict[str, int | float]:
    """The statistics of the guest's last finished job on ``host`` (left in place for others)."""
    flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
    with open_host(host) as conn:
        try:
            return conn.lookupByName(guest).jobStats(flags)
        except libvirt.libvirtError:
            return {}


def ask_coordinator(lab: Lab, call: Callable[[FerryClient], Awaitable[T]], timeout: float = 5.0) -> T | None:
    """One or more API calls on one connection; None while the coordinator does not answer."""

    async def ask() -> T:
        settings = lab.nats_settings(request_timeout=timeout)
        async with await FerryClient.connect(settings) as client:
            return await call(client)

    try:
        return asyncio.run(ask())
    except FerryError:
        return None


def coordinator_hosts(lab: Lab, timeout: float = 5.0) -> HostsReply | None:
    """What ``ferry hosts`` shows; None while the coordinator does not answer."""
    return ask_coordinator(lab, lambda client: client.hosts(), timeout)


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
    return coordinator_sees_all(lab, [guest], host)


def coordinator_sees_all(lab: Lab, guests: Sequence[str], host: str) -> bool:
    """The coordinator sees every one of ``guests`` running on ``host`` alone, with no migration in flight."""
    reply = coordinator_hosts(lab)
    if reply is None:
        return False
    for guest in guests:
        running = [h.host for h in reply.hosts for vm in h.vms if vm.name == guest and vm.state == VmState.RUNNING]
        if running != [host]:
            return False
    return all(h.migrations_in_flight == 0 for h in reply.hosts)


# ---- figures --------------------------------------------------------------------


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def optional_int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


# ---- results --------------------------------------------------------------------


def write_results(path: Path, document: dict[str, Any]) -> None:
    """Write the JSON document whole or not at all (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)


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
