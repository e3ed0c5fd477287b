"""What Ferry costs on top of plain libvirt: one guest moved back and forth, both ways.

Starts a lab of its own (3 libvirt hosts, nats-server, agents, coordinator),
starts one guest on hv1 and moves it between hv1 and hv2, alternating the
method move by move so that any drift hits both:

- baseline: ``virsh migrate --live --p2p --tls --persistent --undefinesource``
  on the source host, the same libvirt flags Ferry uses (Ferry adds
  ABORT_ON_ERROR, which costs nothing);
- Ferry: ``ferry migrate GUEST --to DEST --wait --json``, the operator's CLI as
  a subprocess, talking to the coordinator over NATS.

For every move it measures the wall time of the command and the guest's
downtime (for virsh from the destination's completed job statistics, for
Ferry from the session's outcome). Prints medians, means and the Ferry/virsh
ratios, writes them to DIR/overhead.json, and stops the lab (unless --keep).
Exit status 0 means the measurement ran, whether or not the goal is met.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.common import (
    FERRY,
    VIRSH_MIGRATE_FLAGS,
    BenchError,
    add_run_arguments,
    bring_up,
    check_only_on,
    completed_job_stats,
    console,
    coordinator_sees,
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

GOAL_RATIO = 1.10
HOSTS = 3
GUEST = "bench-1"
MIGRATION_TIMEOUT = 300.0
VIRSH_METHOD, FERRY_METHOD = "virsh", "ferry"
METHODS = (VIRSH_METHOD, FERRY_METHOD)


@dataclass(frozen=True)
class Move:
    round: int
    method: str
    source: str
    dest: str
    wall_s: float  # the command, start to exit
    downtime_ms: float
    job_ms: int | None = None  # libvirt's own duration of the migration job
    data_bytes: int | None = None  # what the job sent
    session_id: str | None = None  # Ferry only


def schedule(rounds: int, a: str = "hv1", b: str = "hv2") -> list[tuple[int, str, str, str]]:
    """(round, method, source, dest) for every move.

    Each round goes a -> b and back; the method that goes first alternates
    from round to round, so each method moves the guest equally often in each
    direction (over two rounds) and at either position within a round.
    """
    moves = []
    for i in range(rounds):
        first, second = METHODS if i % 2 == 0 else METHODS[::-1]
        moves += [(i + 1, first, a, b), (i + 1, second, b, a)]
    return moves


def move_with_virsh(lab: Lab, round: int, guest: str, source: str, dest: str) -> Move:
    timed = virsh_migrate(lab, guest, source, dest, MIGRATION_TIMEOUT)
    stats = completed_job_stats(lab.host(dest), guest)
    if "downtime" not in stats:
        raise BenchError(f"{dest} kept no completed job statistics with a downtime for {guest} after virsh moved it.")
    return Move(
        round,
        VIRSH_METHOD,
        source,
        dest,
        timed.seconds,
        float(stats["downtime"]),
        job_ms=optional_int(stats.get("time_elapsed")),
        data_bytes=optional_int(stats.get("data_processed")),
    )


def move_with_ferry(lab: Lab, round: int, guest: str, source: str, dest: str) -> Move:
    argv = [FERRY, *lab.cli_args(), "migrate", guest, "--to", dest, "--wait", "--json"]
    timed = run_timed(argv, f"ferry migrate {guest} {source} -> {dest}", MIGRATION_TIMEOUT)
    try:
        session = json.loads(timed.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"ferry migrate printed no JSON session: {timed.stdout.strip()[:200]!r}.") from None
    if session.get("state") != "completed" or (session.get("source"), session.get("dest")) != (source, dest):
        raise BenchError(
            f"ferry migrate ended {session.get('state')} moving {session.get('source')} -> {session.get('dest')} "
            f"(expected completed {source} -> {dest}): {session.get('reason') or 'no reason given'}."
        )
    outcome = session.get("outcome") or {}
    if "downtime_ms" not in outcome:
        raise BenchError(f"Ferry's session {session.get('id')} completed without an outcome.downtime_ms.")
    return Move(
        round,
        FERRY_METHOD,
        source,
        dest,
        timed.seconds,
        float(outcome["downtime_ms"]),
        job_ms=optional_int(outcome.get("total_time_ms")),
        data_bytes=optional_int(outcome.get("data_transferred")),
        session_id=session.get("id"),
    )


MOVERS = {VIRSH_METHOD: move_with_virsh, FERRY_METHOD: move_with_ferry}


def prepare(lab: Lab, args: argparse.Namespace) -> None:
    bring_up(lab, args.address_base)
    console.print(f"starting {GUEST} on hv1 ({args.memory} MiB, dirtying {args.dirty_mb} MiB/s) ...")
    lab.create_guest(GUEST, "hv1", memory_mib=args.memory, dirty_mb=args.dirty_mb)
    lab.wait_for_tick(GUEST, "hv1", 1)


def measure(lab: Lab, args: argparse.Namespace, moves: list[Move]) -> None:
    for round, method, source, dest in schedule(args.rounds):
        # Preconditions, outside the timing and the same for both methods: libvirt
        # says the guest runs on the source alone, the coordinator sees it there
        # with nothing in flight, and the guest has ticked there since it arrived.
        check_only_on(lab, GUEST, source)
        wait_until(lambda source=source: coordinator_sees(lab, GUEST, source), f"the coordinator to see {GUEST} on {source} alone", 30)
        tick = lab.wait_for_tick(GUEST, source, 1)
        lab.wait_for_tick(GUEST, source, tick + 1)
        move = MOVERS[method](lab, round, GUEST, source, dest)
        moves.append(move)
        job = f"  (libvirt job {move.job_ms / 1000:.2f} s)" if move.job_ms is not None else ""
        console.print(
            f"  round {round}: {method:5} {source} -> {dest}  {move.wall_s:6.2f} s  downtime {move.downtime_ms:5.0f} ms{job}"
        )
    final = lab.residency(GUEST)[GUEST]
    if final.running_on != ("hv1",):
        raise BenchError(f"After the last move, {final.explain()} (expected hv1 alone).")
    lab.wait_for_tick(GUEST, "hv1", lab.wait_for_tick(GUEST, "hv1", 1) + 1)


def summarize(moves: list[Move]) -> dict[str, Any]:
    per_method = {}
    for method in METHODS:
        walls = [m.wall_s for m in moves if m.method == method]
        downs = [m.downtime_ms for m in moves if m.method == method]
        per_method[method] = {
            "moves": len(walls),
            "wall_s_median": median(walls),
            "wall_s_mean": mean(walls),
            "wall_s_min": min(walls, default=None),
            "wall_s_max": max(walls, default=None),
            "downtime_ms_median": median(downs),
            "downtime_ms_mean": mean(downs),
            "job_ms_median": median([m.job_ms for m in moves if m.method == method and m.job_ms is not None]),
        }
    v, f = per_method[VIRSH_METHOD], per_method[FERRY_METHOD]
    ratios = {
        "wall_median": ratio(f["wall_s_median"], v["wall_s_median"]),
        "downtime_median": ratio(f["downtime_ms_median"], v["downtime_ms_median"]),
    }
    goal = {
        "max_ratio": GOAL_RATIO,
        "wall_met": ratios["wall_median"] is not None and ratios["wall_median"] <= GOAL_RATIO,
        # A zero baseline downtime cannot give a ratio; then only "no worse" counts.
        "downtime_met": (
            ratios["downtime_median"] <= GOAL_RATIO
            if ratios["downtime_median"] is not None
            else f["downtime_ms_median"] is not None and f["downtime_ms_median"] <= (v["downtime_ms_median"] or 0)
        ),
    }
    return {"methods": per_method, "ratios": ratios, "goal": goal}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_summary(summary: dict[str, Any]) -> None:
    table = Table(
        title="Ferry overhead against plain virsh",
        caption="wall: the command, start to exit; job: the libvirt migration job inside it",
        header_style="bold",
    )
    columns = ("method", "moves", "wall med s", "wall mean s", "downtime med ms", "job med s")
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for method in METHODS:
        m = summary["methods"][method]
        table.add_row(
            method,
            str(m["moves"]),
            _fmt(m["wall_s_median"], ".2f"),
            _fmt(m["wall_s_mean"], ".2f"),
            _fmt(m["downtime_ms_median"], ".0f"),
            _fmt(m["job_ms_median"] / 1000 if m["job_ms_median"] is not None else None, ".2f"),
        )
    r = summary["ratios"]
    table.add_section()
    table.add_row("ferry/virsh", "", _fmt(r["wall_median"], ".3f"), "", _fmt(r["downtime_median"], ".3f"), "")
    console.print(table)
    goal = summary["goal"]

    def verdict(met: bool) -> str:
        return "[green]met[/]" if met else "[yellow]missed[/]"

    console.print(
        f"goal: ratio <= {GOAL_RATIO:.2f}  (wall time: {verdict(goal['wall_met'])}, downtime: {verdict(goal['downtime_met'])})"
    )


def write_json(path: Path, args: argparse.Namespace, started: datetime, moves: list[Move], **extra: Any) -> None:
    document = {
        "benchmark": "overhead",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "rounds": args.rounds,
            "hosts": HOSTS,
            "address_base": args.address_base,
            "memory_mib": args.memory,
            "dirty_mb": args.dirty_mb,
            "guest": GUEST,
            "virsh_flags": " ".join(VIRSH_MIGRATE_FLAGS),
            "ferry_command": "ferry migrate GUEST --to DEST --wait --json",
        },
        "moves": [asdict(m) for m in moves],
        **extra,
    }
    write_results(path, document)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    add_run_arguments(
        parser, rounds=5, rounds_help="rounds; each moves the guest there with one method and back with the other",
        memory=256, memory_help="guest memory", dirty_mb=0, dirty_help="memory the guest rewrites per second",
    )
    return parse_checked(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    result_file = args.dir / "overhead.json"
    moves: list[Move] = []

    def body(lab: Lab) -> None:
        prepare(lab, args)
        measure(lab, args, moves)
        continuity = lab.continuity(GUEST)
        if not continuity.ok:
            raise BenchError(f"{GUEST} did not keep running across the moves: {continuity.explain()}.")
        console.print(f"continuity: {continuity.explain()}")
        summary = summarize(moves)
        write_json(result_file, args, started, moves, **summary, continuity=continuity.explain())
        print_summary(summary)
        console.print(f"results: {result_file}")

    def save_partial(error: str) -> None:
        if moves:
            write_json(result_file, args, started, moves, error=error)
            console.print(f"the moves measured before that: {result_file}")

    return run_in_lab(args, HOSTS, body, save_partial)


if __name__ == "__main__":
    sys.exit(main())
