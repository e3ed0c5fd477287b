"""Busy TCG guests moved again and again: how often does the guest arrive broken?

QEMU before 9.0 loses some of a TCG guest's memory writes during live migration
(README, "Supported versions"): a guest then crashes or hangs on the host it
moved to. This measures it on whatever QEMU and libvirt the machine has, so two
stacks can be compared. Starts a lab of its own (2 hosts, nats-server, agents,
coordinator) and, for each workload, one guest on hv1 that rewrites that many
MiB of its memory every second, then moves it back and forth between hv1 and
hv2 with ``ferry migrate --wait`` (default policy: auto-converge armed) under a
bandwidth cap. After each move the guest must tick on its new host; then its
consoles are read for the signs lab/lost_writes.py knows (a kernel crash after
it ran elsewhere, or silence on arrival). A guest that shows them is counted,
deleted and replaced by a fresh one, and the moves go on.

Prints each move and a table per workload with the versions the agents
report, and writes DIR/lost_writes.json. Exit status 0 means the measurement
ran, whatever it found.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from rich.table import Table

from bench.common import (
    FERRY,
    BenchError,
    add_lab_arguments,
    bring_up,
    console,
    coordinator_hosts,
    median,
    run_in_lab,
    run_timed,
    write_results,
)
from ferry.lab.continuity import last_tick_on
from ferry.lab.errors import LabError
from ferry.lab.lab import Lab
from ferry.lab.lost_writes import SILENT_SECONDS
from ferry.proto.session import Session, SessionState

HOSTS = ("hv1", "hv2")
MOVE_TIMEOUT = 600.0
# A guest that prints no new tick on its new host this long after the move hangs.
ARRIVAL_TIMEOUT = SILENT_SECONDS + 5.0


@dataclass
class Workload:
    dirty_mb: int
    moves: int = 0
    completed: int = 0
    failed: list[str] = field(default_factory=list)
    signs: list[str] = field(default_factory=list)
    guests: int = 1
    seconds: list[float] = field(default_factory=list)
    downtimes_ms: list[int] = field(default_factory=list)
    throttled: int = 0


def versions(lab: Lab) -> dict[str, str]:
    reply = coordinator_hosts(lab)
    if reply is None or not reply.hosts:
        return {}
    v = reply.hosts[0].versions
    return {"libvirt": v.libvirt, "qemu": v.qemu}


def guest_name(dirty_mb: int, serial: int) -> str:
    return f"busy{dirty_mb}-{serial}"


def start_guest(lab: Lab, name: str, dirty_mb: int, memory: int) -> None:
    lab.create_guest(name, "hv1", memory_mib=memory, dirty_mb=dirty_mb)
    lab.wait_for_tick(name, "hv1", 3)


def move(lab: Lab, name: str, dest: str, bandwidth: int) -> Session:
    argv = [FERRY, *lab.cli_args(), "migrate", name, "--to", dest, "--wait", "--json"]
    if bandwidth:
        argv += ["--bandwidth", str(bandwidth)]
    timed = run_timed(argv, f"ferry migrate {name} --to {dest}", MOVE_TIMEOUT, accept=(0, 1))
    try:
        return msgspec.json.decode(timed.stdout, type=Session)
    except msgspec.DecodeError:
        raise BenchError(f"ferry migrate printed no session: {timed.stderr.strip()[-300:]}") from None


def arrived(lab: Lab, name: str, host: str, tick_before: int) -> bool:
    """The guest printed a newer tick on ``host`` within ARRIVAL_TIMEOUT."""
    try:
        lab.wait_for_tick(name, host, tick_before + 1, timeout=ARRIVAL_TIMEOUT)
    except LabError:
        return False
    return True


def run_workload(lab: Lab, work: Workload, args: argparse.Namespace) -> None:
    serial = 1
    name = guest_name(work.dirty_mb, serial)
    start_guest(lab, name, work.dirty_mb, args.memory)
    here = "hv1"
    for number in range(1, args.moves + 1):
        dest = "hv2" if here == "hv1" else "hv1"
        tick_before = max(last_tick_on(lab.layout, name, h) for h in HOSTS)
        started = time.monotonic()
        session = move(lab, name, dest, args.bandwidth)
        work.moves += 1
        took = time.monotonic() - started
        outcome = f"{session.state}"
        if session.state == SessionState.COMPLETED:
            work.completed += 1
            work.seconds.append(round(took, 1))
            if session.outcome is not None:
                work.downtimes_ms.append(session.outcome.downtime_ms)
            if any(a.kind == "auto_converge_engaged" for a in session.steering):
                work.throttled += 1
            here = dest
        else:
            work.failed.append(f"move {number}: {session.code}: {session.reason}")
            outcome += f" ({session.code})"
        ticking = arrived(lab, name, here, tick_before)
        signs = lab.lost_write_signs(name)
        if signs is None and not ticking:
            signs = f"it printed no new tick on {here} within {ARRIVAL_TIMEOUT:.0f} s of the move"
        console.print(
            f"  {work.dirty_mb} MiB/s, move {number}: {name} -> {dest}: {outcome} in {took:.1f} s"
            + (f"  [red]lost-write signs: {signs}[/]" if signs else "")
        )
        if signs:
            work.signs.append(f"move {number} ({name} -> {dest}): {signs}")
            lab.delete_guest(name)
            serial += 1
            work.guests += 1
            name = guest_name(work.dirty_mb, serial)
            start_guest(lab, name, work.dirty_mb, args.memory)
            here = "hv1"
    lab.delete_guest(name)


def print_table(stack: dict[str, str], works: list[Workload], bandwidth: int) -> None:
    table = Table(title=f"QEMU {stack.get('qemu', '?')}, libvirt {stack.get('libvirt', '?')}, cap {bandwidth or 'none'} MiB/s")
    for column in ("MiB/s", "moves", "ok", "failed", "signs", "throttled", "median s", "downtime ms"):
        table.add_column(column)
    for w in works:
        table.add_row(
            str(w.dirty_mb), str(w.moves), str(w.completed), str(len(w.failed)), str(len(w.signs)),
            str(w.throttled), _median(w.seconds), _median(w.downtimes_ms),
        )
    console.print(table)


def _median(values: list[float] | list[int]) -> str:
    middle = median(values)
    return "-" if middle is None else f"{middle:g}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.lost_writes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=20, help="moves per workload (default 20)")
    parser.add_argument("--dirty", default="64,16", help="MiB/s each guest rewrites, one workload each (default 64,16)")
    parser.add_argument("--memory", type=int, default=256, metavar="MiB", help="guest memory (default 256)")
    parser.add_argument("--bandwidth", type=int, default=32, metavar="MiB/s", help="migration cap; 0 = none (default 32)")
    add_lab_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.dirty = [int(x) for x in args.dirty.split(",")]
    except ValueError:
        parser.error("--dirty takes MiB/s values separated by commas, such as 64,16")
    if args.moves < 1 or any(d < 1 for d in args.dirty):
        parser.error("--moves and every --dirty value must be at least 1")
    args.dir = args.dir.absolute()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    works = [Workload(d) for d in args.dirty]
    stack: dict[str, str] = {}

    def document(status: str) -> dict[str, Any]:
        return {
            "benchmark": "lost_writes",
            "status": status,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "stack": stack,
            "moves_per_workload": args.moves,
            "bandwidth_mib": args.bandwidth,
            "memory_mib": args.memory,
            "workloads": [asdict(w) for w in works],
        }

    def body(lab: Lab) -> None:
        bring_up(lab, args.address_base)
        stack.update(versions(lab))
        console.print(f"stack: QEMU {stack.get('qemu')}, libvirt {stack.get('libvirt')}")
        for work in works:
            try:
                run_workload(lab, work, args)
            except LabError as error:
                raise BenchError(str(error)) from None
        print_table(stack, works, args.bandwidth)
        write_results(args.dir / "lost_writes.json", document("done"))

    return run_in_lab(args, len(HOSTS), body, lambda status: write_results(args.dir / "lost_writes.json", document(status)))


if __name__ == "__main__":
    sys.exit(main())
