"""Emptying a host: ``ferry drain --wait`` against a plain sequential virsh loop.

Starts a lab of its own (3 libvirt hosts, nats-server, agents, coordinator)
and N small guests on hv1, each rewriting some of its memory every second.
Every round empties hv1 once with each method, the method that goes first
alternating from round to round:

- baseline: what an operator without Ferry scripts, one ``virsh migrate
  --live --p2p --tls --persistent --undefinesource`` per guest, one after
  another, to hv2 and hv3 in turn;
- Ferry: ``ferry drain hv1 --wait --json``, the operator's CLI as a
  subprocess; the coordinator plans the destinations and runs the moves
  under its admission limits (by default 2 out of one host, 2 into one host,
  5 in the cluster).

Each side is timed from the start of its first command to the end of its last.
Between sides the guests go back to hv1 with plain libvirt (not timed) and
``ferry undrain hv1`` lifts the mark. After every side each guest must run on
exactly one host, the one it was sent to; at the end each guest must never
have restarted. Prints each round, the medians and the ratio Ferry/virsh
(lower is better), writes them to DIR/drain.json and stops the lab (unless
--keep). Exit status 0 means the measurement ran and lost no guest.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from rich.table import Table

from bench.common import (
    FERRY,
    VIRSH_MIGRATE_FLAGS,
    BenchError,
    add_run_arguments,
    ask_coordinator,
    bring_up,
    check_only_on,
    completed_job_stats,
    console,
    coordinator_hosts,
    coordinator_sees_all,
    mean,
    median,
    optional_int,
    parse_checked,
    ratio,
    run_in_lab,
    run_timed,
    virsh_migrate,
    wait_until,
    write_results,
)
from ferry.lab.lab import Lab
from ferry.lab.residency import Residency
from ferry.proto.drain import Drain, ItemState
from ferry.proto.limits import Limits
from ferry.proto.session import Session, SessionState

HOSTS = 3
SOURCE = "hv1"
TARGETS = ("hv2", "hv3")
MIGRATION_TIMEOUT = 300.0
VIRSH_METHOD, FERRY_METHOD = "virsh", "ferry"
METHODS = (VIRSH_METHOD, FERRY_METHOD)


@dataclass(frozen=True)
class Move:
    guest: str
    dest: str
    start_s: float  # since the side started (for Ferry: the session admitted)
    end_s: float  # since the side started (for Ferry: the session completed)
    job_ms: int | None = None  # libvirt's own duration of the migration job
    downtime_ms: float | None = None
    session_id: str | None = None  # Ferry only


@dataclass(frozen=True)
class Side:
    """One method emptying hv1 once."""

    round: int
    method: str
    wall_s: float  # first command started to last command ended
    moves: tuple[Move, ...]

    @property
    def peak_concurrent(self) -> int:
        return peak_overlap([(m.start_s, m.end_s) for m in self.moves])

    @property
    def job_s_sum(self) -> float | None:
        jobs = [m.job_ms for m in self.moves]
        return None if any(j is None for j in jobs) else sum(jobs) / 1000  # type: ignore[misc]


# ---- pure decisions ---------------------------------------------------------------


def guest_names(count: int) -> list[str]:
    return [f"drain-{i}" for i in range(1, count + 1)]


def baseline_plan(guests: Sequence[str], targets: Sequence[str] = TARGETS) -> list[tuple[str, str]]:
    """(guest, destination) in the order the loop moves them: the targets in turn."""
    return [(guest, targets[i % len(targets)]) for i, guest in enumerate(guests)]


def schedule(rounds: int) -> list[tuple[int, str]]:
    """(round, method) for every side; the method that goes first alternates by round."""
    sides = []
    for i in range(rounds):
        order = METHODS if i % 2 == 0 else METHODS[::-1]
        sides += [(i + 1, method) for method in order]
    return sides


def peak_overlap(spans: Sequence[tuple[float, float]]) -> int:
    """The most spans open at one moment; one that ends as another starts is not two."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def admitted_span(session: Session) -> tuple[float, float] | None:
    """Wall-clock times the session was admitted (first `preparing`) and completed."""
    start = next((t.at for t in session.history if t.state == SessionState.PREPARING), None)
    end = next((t.at for t in session.history if t.state == SessionState.COMPLETED), None)
    return None if start is None or end is None else (start, end)


def drain_record(stdout: str) -> Drain:
    """The final record ``ferry drain --wait --json`` prints (alone on stdout)."""
    try:
        return msgspec.json.decode(stdout, type=Drain)
    except msgspec.DecodeError as error:
        raise BenchError(f"ferry drain printed no valid drain record ({error}): {stdout.strip()[:200]!r}.") from None


def landing_problems(residency: Mapping[str, Residency], expected: Mapping[str, str]) -> list[str]:
    """Sentences for every guest not running on exactly its expected host (empty: all fine)."""
    problems = []
    for guest, host in expected.items():
        where = residency[guest]
        if where.running_on != (host,) or where.active_on != (host,) or where.defined_on != (host,):
            problems.append(f"{where.explain()} (expected {host} alone)")
    return problems


# ---- acting on the lab ------------------------------------------------------------


def check_landed(lab: Lab, expected: dict[str, str], after: str) -> None:
    """Fails loudly unless every guest runs, is active and is defined on its expected host alone."""
    problems = landing_problems(lab.residency(*expected), expected)
    if problems:
        raise BenchError(f"After {after}: " + "; ".join(problems) + ".")


def ready_on_source(lab: Lab, guests: Sequence[str]) -> None:
    """Outside the timing, the same for both methods: libvirt and the coordinator see
    every guest on hv1 alone, nothing in flight, hv1 not draining, and each guest
    has ticked on hv1 since it arrived."""
    for guest in guests:
        check_only_on(lab, guest, SOURCE)
    wait_until(lambda: coordinator_sees_all(lab, guests, SOURCE), f"the coordinator to see every guest on {SOURCE}", 30)
    reply = coordinator_hosts(lab)
    if reply is None:
        raise BenchError("Before a drain, the coordinator does not answer.")
    if draining := [h.host for h in reply.hosts if h.draining]:
        raise BenchError(f"Before a drain, {', '.join(draining)} still drains (an undrain did not take).")
    for guest in guests:
        tick = lab.wait_for_tick(guest, SOURCE, 1)
        lab.wait_for_tick(guest, SOURCE, tick + 1)


def drain_with_virsh(lab: Lab, round: int, guests: Sequence[str]) -> Side:
    spans = []
    started = time.monotonic()
    for guest, dest in baseline_plan(guests):
        before = time.monotonic() - started
        virsh_migrate(lab, guest, SOURCE, dest, MIGRATION_TIMEOUT)
        spans.append((guest, dest, before, time.monotonic() - started))
    wall = time.monotonic() - started
    # Statistics after the loop, so reading them costs the timed loop nothing.
    moves = []
    for guest, dest, start, end in spans:
        stats = completed_job_stats(lab.host(dest), guest)
        downtime = stats.get("downtime")
        moves.append(
            Move(guest, dest, start, end, optional_int(stats.get("time_elapsed")), None if downtime is None else float(downtime))
        )
    return Side(round, VIRSH_METHOD, wall, tuple(moves))


def drain_with_ferry(lab: Lab, round: int, guests: Sequence[str]) -> Side:
    argv = [FERRY, *lab.cli_args(), "drain", SOURCE, "--wait", "--json"]
    started_at = time.time()  # the sessions' history is wall-clock time
    timed = run_timed(argv, f"ferry drain {SOURCE} --wait", MIGRATION_TIMEOUT * len(guests))
    drain = drain_record(timed.stdout)
    items = {item.vm: item for item in drain.items}
    if set(items) != set(guests):
        raise BenchError(f"Ferry's drain of {SOURCE} listed {sorted(items)}, expected {sorted(guests)}.")
    unmoved = [f"{i.vm} {i.state} ({i.reason or 'no reason'})" for i in drain.items if i.state != ItemState.MOVED]
    if unmoved:
        raise BenchError(f"ferry drain exited 0 but did not move {', '.join(unmoved)}.")
    ids = [items[g].session_id for g in guests]

    async def fetch(client):
        return [await client.session(session_id) for session_id in ids]

    sessions = ask_coordinator(lab, fetch)
    if sessions is None:
        raise BenchError("The coordinator did not answer for the drain's sessions.")
    moves = []
    for guest, session in zip(guests, sessions, strict=True):
        span = admitted_span(session)
        if session.state != SessionState.COMPLETED or span is None or session.dest not in TARGETS:
            raise BenchError(f"Session {session.id} moving {guest} ended {session.state} to {session.dest}: {session.reason}.")
        outcome = session.outcome
        moves.append(
            Move(
                guest,
                session.dest,
                span[0] - started_at,
                span[1] - started_at,
                outcome.total_time_ms if outcome else None,
                float(outcome.downtime_ms) if outcome else None,
                session.id,
            )
        )
    return Side(round, FERRY_METHOD, timed.seconds, tuple(moves))


def move_back(lab: Lab, side: Side) -> None:
    """Not timed: undrain hv1 after Ferry, then every guest back to hv1 with plain libvirt."""
    if side.method == FERRY_METHOD:
        run_timed([FERRY, *lab.cli_args(), "undrain", SOURCE], f"ferry undrain {SOURCE}", 30)
    for move in side.moves:
        virsh_migrate(lab, move.guest, move.dest, SOURCE, MIGRATION_TIMEOUT)
    check_landed(lab, {m.guest: SOURCE for m in side.moves}, "moving the guests back")


DRAINERS = {VIRSH_METHOD: drain_with_virsh, FERRY_METHOD: drain_with_ferry}


def prepare(lab: Lab, args: argparse.Namespace, guests: Sequence[str]) -> Limits:
    bring_up(lab, args.address_base)
    console.print(f"starting {len(guests)} guests on {SOURCE} ({args.memory} MiB each, dirtying {args.dirty_mb} MiB/s) ...")
    for guest in guests:
        lab.create_guest(guest, SOURCE, memory_mib=args.memory, dirty_mb=args.dirty_mb)
    for guest in guests:
        lab.wait_for_tick(guest, SOURCE, 1)
    reply = ask_coordinator(lab, lambda client: client.limits())
    if reply is None:
        raise BenchError("The coordinator did not say which limits are in force.")
    limits = reply.limits
    console.print(
        f"Ferry's limits: {limits.outbound_per_host} out of one host, {limits.inbound_per_host} into one host, "
        f"{limits.cluster} in the cluster (from the {reply.source})"
    )
    return limits


def measure(lab: Lab, args: argparse.Namespace, guests: Sequence[str], sides: list[Side]) -> None:
    for round, method in schedule(args.rounds):
        ready_on_source(lab, guests)
        side = DRAINERS[method](lab, round, guests)
        check_landed(lab, {m.guest: m.dest for m in side.moves}, f"round {round}'s {method} drain")
        sides.append(side)
        where = ", ".join(f"{m.guest}->{m.dest}" for m in side.moves)
        console.print(
            f"  round {round}: {method:5} {side.wall_s:6.2f} s  at most {side.peak_concurrent} at once  "
            f"(libvirt jobs {_fmt(side.job_s_sum, '.2f')} s in all; {where})"
        )
        move_back(lab, side)


def summarize(sides: list[Side]) -> dict[str, Any]:
    per_method = {}
    for method in METHODS:
        mine = [s for s in sides if s.method == method]
        walls = [s.wall_s for s in mine]
        moves = [m for s in mine for m in s.moves]
        per_method[method] = {
            "drains": len(mine),
            "wall_s_median": median(walls),
            "wall_s_mean": mean(walls),
            "wall_s_min": min(walls, default=None),
            "wall_s_max": max(walls, default=None),
            "peak_concurrent": max((s.peak_concurrent for s in mine), default=None),
            "job_s_per_move_median": median([m.job_ms / 1000 for m in moves if m.job_ms is not None]),
            "downtime_ms_median": median([m.downtime_ms for m in moves if m.downtime_ms is not None]),
        }
    v, f = per_method[VIRSH_METHOD], per_method[FERRY_METHOD]
    ratios = {
        "wall_median": ratio(f["wall_s_median"], v["wall_s_median"]),
        "job_per_move_median": ratio(f["job_s_per_move_median"], v["job_s_per_move_median"]),
    }
    return {"methods": per_method, "ratios": ratios}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_summary(sides: list[Side], summary: dict[str, Any]) -> None:
    table = Table(
        title=f"Emptying {SOURCE}: ferry drain --wait against a sequential virsh loop",
        caption="wall: first command started to last ended; job: one libvirt migration job",
        header_style="bold",
    )
    for column in ("round", "method", "wall s", "at once", "job med s", "downtime med ms"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for side in sides:
        jobs = [m.job_ms / 1000 for m in side.moves if m.job_ms is not None]
        downs = [m.downtime_ms for m in side.moves if m.downtime_ms is not None]
        table.add_row(
            str(side.round),
            side.method,
            f"{side.wall_s:.2f}",
            str(side.peak_concurrent),
            _fmt(median(jobs), ".2f"),
            _fmt(median(downs), ".0f"),
        )
    table.add_section()
    for method in METHODS:
        m = summary["methods"][method]
        table.add_row(
            "median",
            method,
            _fmt(m["wall_s_median"], ".2f"),
            str(m["peak_concurrent"]),
            _fmt(m["job_s_per_move_median"], ".2f"),
            _fmt(m["downtime_ms_median"], ".0f"),
        )
    r = summary["ratios"]
    table.add_row("", "ferry/virsh", _fmt(r["wall_median"], ".3f"), "", _fmt(r["job_per_move_median"], ".3f"), "")
    console.print(table)


def write_json(path: Path, args: argparse.Namespace, started: datetime, sides: list[Side], **extra: Any) -> None:
    document = {
        "benchmark": "drain",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "rounds": args.rounds,
            "guests": args.guests,
            "hosts": HOSTS,
            "source": SOURCE,
            "address_base": args.address_base,
            "memory_mib": args.memory,
            "dirty_mb": args.dirty_mb,
            "virsh_command": f"for each guest in turn: virsh migrate {' '.join(VIRSH_MIGRATE_FLAGS)} GUEST {'|'.join(TARGETS)}",
            "ferry_command": f"ferry drain {SOURCE} --wait --json",
        },
        "sides": [{**asdict(s), "peak_concurrent": s.peak_concurrent, "job_s_sum": s.job_s_sum} for s in sides],
        **extra,
    }
    write_results(path, document)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--guests", type=int, default=4, help="guests on hv1 to move (default 4)")
    add_run_arguments(
        parser, rounds=2, rounds_help="rounds; each empties hv1 once with each method",
        memory=128, memory_help="memory of each guest", dirty_mb=8, dirty_help="memory each guest rewrites per second",
    )
    return parse_checked(parser, argv, lambda args: [(args.guests < 1, "--guests must be at least 1")])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    result_file = args.dir / "drain.json"
    guests = guest_names(args.guests)
    sides: list[Side] = []

    def body(lab: Lab) -> None:
        limits = prepare(lab, args, guests)
        measure(lab, args, guests, sides)
        broken = {g: r for g in guests if not (r := lab.continuity(g)).ok}
        if broken:
            raise BenchError("Guests restarted or ran twice: " + "; ".join(f"{g}: {r.explain()}" for g, r in broken.items()) + ".")
        console.print(f"continuity: all {len(guests)} guests kept running, one boot each")
        summary = summarize(sides)
        write_json(result_file, args, started, sides, **summary, ferry_limits=msgspec.to_builtins(limits), continuity="ok")
        print_summary(sides, summary)
        console.print(f"results: {result_file}")

    def save_partial(error: str) -> None:
        if sides:
            write_json(result_file, args, started, sides, error=error)
            console.print(f"the drains measured before that: {result_file}")

    return run_in_lab(args, HOSTS, body, save_partial)


if __name__ == "__main__":
    sys.exit(main())
