"""A busy guest: plain pre-copy with a deadline against Ferry's default policy.

Starts a lab of its own (2 libvirt hosts, nats-server, agents, coordinator)
and one guest on hv1 that rewrites more memory per second than the bandwidth
cap lets through. Every round tries to move it to hv2 once with each method,
the method that goes first alternating from round to round:

- baseline: ``virsh migrate --live --p2p --tls --persistent --undefinesource
  --bandwidth N``, given up after the deadline with ``virsh domjobabort``
  (virsh's own ``--timeout`` can only suspend the guest or switch to
  post-copy when time runs out; it cannot abort);
- Ferry: ``ferry migrate GUEST --to hv2 --bandwidth N --wait --json`` with the
  default convergence policy (it gives up on its own, after 120 s for a guest
  this size).

For each attempt it records whether it completed, its total time (the
command, start to exit), the downtime (for virsh from the destination's
completed job statistics, for Ferry from the session's outcome), the policy
actions Ferry took, and where the guest runs afterwards: on exactly one host,
or the benchmark fails. A guest that reached hv2 goes back to hv1 with
``ferry migrate`` and no cap (not timed). At the end the guest must still be
on its first boot. Prints each round and a summary, writes them to
DIR/convergence.json and stops the lab (unless --keep). Exit status 0 means
the measurement ran and lost no guest, whichever method completed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt
import msgspec
from rich.table import Table

from bench.common import (
    FERRY,
    VIRSH,
    VIRSH_MIGRATE_FLAGS,
    BenchError,
    add_run_arguments,
    ask_coordinator,
    bring_up,
    check_only_on,
    completed_job_stats,
    console,
    coordinator_sees,
    last_line,
    median,
    optional_int,
    parse_checked,
    ratio,
    run_in_lab,
    run_timed,
    wait_until,
    write_results,
)
from ferry.agent.progress import progress_from_stats
from ferry.lab.lab import Lab
from ferry.lab.libvirt_conn import open_host
from ferry.lab.residency import Residency
from ferry.proto.api import MigrateRequest, PlanReply
from ferry.proto.convergence import ActionKind, Prediction
from ferry.proto.progress import Progress
from ferry.proto.session import MigrateOptions, Session, SessionState

HOSTS = 2
GUEST = "busy-1"
SOURCE, DEST = "hv1", "hv2"
VIRSH_METHOD, FERRY_METHOD = "virsh", "ferry"
METHODS = (VIRSH_METHOD, FERRY_METHOD)
MIB = 1024 * 1024
SAMPLE_EVERY = 1.0  # seconds between two looks at the baseline's job
MOVE_BACK_TIMEOUT = 300.0


@dataclass(frozen=True)
class Attempt:
    """One method trying to move the guest from hv1 to hv2 once."""

    round: int
    method: str
    completed: bool
    total_s: float  # the command, start to exit (virsh: including the abort)
    end: str  # "completed", or why it stopped
    runs_on: str  # where the guest runs afterwards (alone)
    downtime_ms: float | None = None  # only when completed
    job_ms: int | None = None  # libvirt's own duration of the migration job
    data_bytes: int | None = None  # what the job sent
    # The job's last sample before it ended: passes, data left, dirty rate, ...
    last_sample: dict[str, int] | None = None
    actions: dict[str, int] = field(default_factory=dict)  # Ferry only: policy action kind -> count
    max_downtime_ms: int | None = None  # Ferry only: the highest max downtime the policy set
    throttle_pct: int | None = None  # Ferry only: the highest vCPU throttle QEMU applied
    session_id: str | None = None  # Ferry only


# ---- pure decisions -------------------------------------------------------------


def schedule(rounds: int) -> list[tuple[int, str]]:
    """(round, method) for every attempt; the method that goes first alternates by round."""
    attempts = []
    for i in range(rounds):
        order = METHODS if i % 2 == 0 else METHODS[::-1]
        attempts += [(i + 1, method) for method in order]
    return attempts


def virsh_end(returncode: int, aborted: bool, said: str) -> str:
    """How a virsh attempt ended: "completed" or "aborted at the deadline"; BenchError when it failed by itself."""
    if returncode == 0:
        return "completed"  # also when it finished just as the deadline came
    if aborted:
        return "aborted at the deadline"
    raise BenchError(f"virsh migrate failed before the deadline, with exit status {returncode}: {said}")


def session_record(stdout: str) -> Session:
    """The final session ``ferry migrate --wait --json`` prints (alone on stdout)."""
    try:
        return msgspec.json.decode(stdout, type=Session)
    except msgspec.DecodeError as error:
        raise BenchError(f"ferry migrate printed no valid session ({error}): {stdout.strip()[:200]!r}.") from None


def action_counts(session: Session) -> dict[str, int]:
    """How often the policy took each kind of action, in the order each kind first came."""
    return dict(Counter(str(action.kind) for action in session.steering))


def lever_peaks(session: Session) -> tuple[int | None, int | None]:
    """The highest max downtime (ms) the policy set and the highest throttle (%) QEMU applied; None when unused."""
    downtimes = [a.value for a in session.steering if a.kind == ActionKind.SET_DOWNTIME]
    throttles = [a.value for a in session.steering if a.kind == ActionKind.AUTO_CONVERGE_ENGAGED]
    return max(downtimes, default=None), max(throttles, default=None)


def last_progress(session: Session) -> Progress | None:
    """The latest job sample the session kept: its progress, else the last action's sample."""
    if session.progress is not None:
        return session.progress
    samples = [a.sample for a in session.steering if a.sample is not None]
    return samples[-1] if samples else None


def ferry_end(session: Session) -> str:
    if session.state == SessionState.COMPLETED:
        return "completed"
    return f"{session.state} ({session.code}): {session.reason}"


def alone_on(where: Residency) -> str | None:
    """The one host the guest runs, is active and is defined on; None when that is not exactly one host."""
    host = where.single_host
    if host is None or where.active_on != (host,) or where.defined_on != (host,):
        return None
    return host


def total_time_ratio(virsh: Sequence[Attempt], ferry: Sequence[Attempt]) -> tuple[float | None, str]:
    """Ferry/virsh of the median total time of the attempts that completed, or why there is none."""
    v = [a.total_s for a in virsh if a.completed]
    f = [a.total_s for a in ferry if a.completed]
    if v and f:
        return ratio(median(f), median(v)), ""
    if f:
        return None, "virsh did not complete"
    if v:
        return None, "ferry did not complete"
    return None, "neither completed"


def summarize(attempts: Sequence[Attempt]) -> dict[str, Any]:
    per_method = {}
    for method in METHODS:
        mine = [a for a in attempts if a.method == method]
        done = [a for a in mine if a.completed]
        per_method[method] = {
            "attempts": len(mine),
            "completed": len(done),
            "total_s_median": median([a.total_s for a in mine]),
            "completed_total_s_median": median([a.total_s for a in done]),
            "downtime_ms_median": median([a.downtime_ms for a in done if a.downtime_ms is not None]),
            "job_s_median": median([a.job_ms / 1000 for a in done if a.job_ms is not None]),
        }
    by_method = {m: [a for a in attempts if a.method == m] for m in METHODS}
    value, note = total_time_ratio(by_method[VIRSH_METHOD], by_method[FERRY_METHOD])
    return {"methods": per_method, "ratio_total_time": value, "ratio_note": note}


# ---- acting on the lab ----------------------------------------------------------


def ready_on_source(lab: Lab) -> None:
    """Outside the timing, the same for both methods: libvirt and the coordinator see
    the guest on hv1 alone, nothing in flight, and it has ticked there since it arrived."""
    check_only_on(lab, GUEST, SOURCE)
    wait_until(lambda: coordinator_sees(lab, GUEST, SOURCE), f"the coordinator to see {GUEST} on {SOURCE} alone", 30)
    tick = lab.wait_for_tick(GUEST, SOURCE, 1)
    lab.wait_for_tick(GUEST, SOURCE, tick + 1)


def settled_host(lab: Lab, expected: str, after: str) -> str:
    """Waits until the guest runs on ``expected`` alone (an aborted incoming copy takes a moment to go)."""
    try:
        return wait_until(lambda: alone_on(lab.residency(GUEST)[GUEST]) == expected and expected, f"{GUEST} on {expected} alone", 30)
    except BenchError:
        raise BenchError(f"After {after}, {lab.residency(GUEST)[GUEST].explain()} (expected {expected} alone).") from None


def try_with_virsh(lab: Lab, round: int, args: argparse.Namespace) -> Attempt:
    source = lab.host(SOURCE)
    argv = [VIRSH, "-c", source.uri, "migrate", *VIRSH_MIGRATE_FLAGS, "--bandwidth", str(args.bandwidth), GUEST, lab.host(DEST).peer_uri]
    last: Progress | None = None
    aborted = False
    with open_host(source) as conn:
        dom = conn.lookupByName(GUEST)
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            next_sample = started
            while proc.poll() is None:
                now = time.monotonic()
                if now - started >= args.deadline and not aborted:
                    aborted = True
                    run_timed([VIRSH, "-c", source.uri, "domjobabort", GUEST], f"virsh domjobabort {GUEST}", 30, accept=(0, 1))
                if now >= next_sample and not aborted:
                    last = _sample(dom) or last
                    next_sample += SAMPLE_EVERY
                time.sleep(0.1)
            seconds = time.monotonic() - started
            stdout, stderr = proc.communicate()
        finally:
            if proc.poll() is None:  # interrupted: leave no migration behind
                _abort_quietly(dom)
                proc.kill()
                proc.wait()
    end = virsh_end(proc.returncode, aborted, last_line(stderr, stdout))
    completed = end == "completed"
    runs_on = settled_host(lab, DEST if completed else SOURCE, f"virsh {end}")
    stats = completed_job_stats(lab.host(DEST), GUEST) if completed else {}
    if completed and "downtime" not in stats:
        raise BenchError(f"{DEST} kept no completed job statistics with a downtime for {GUEST} after virsh moved it.")
    return Attempt(
        round,
        VIRSH_METHOD,
        completed,
        seconds,
        end,
        runs_on,
        downtime_ms=float(stats["downtime"]) if completed else None,
        job_ms=optional_int(stats.get("time_elapsed")),
        data_bytes=optional_int(stats.get("data_processed")) or (last.data_processed if last else None),
        last_sample=msgspec.to_builtins(last) if last else None,
    )


def _sample(dom: libvirt.virDomain) -> Progress | None:
    try:
        stats = dom.jobStats()
    except libvirt.libvirtError:
        return None
    return progress_from_stats(stats) if stats.get("type") == libvirt.VIR_DOMAIN_JOB_UNBOUNDED else None


def _abort_quietly(dom: libvirt.virDomain) -> None:
    try:
        dom.abortJob()
    except libvirt.libvirtError:
        pass


def try_with_ferry(lab: Lab, round: int, args: argparse.Namespace) -> Attempt:
    argv = [FERRY, *lab.cli_args(), "migrate", GUEST, "--to", DEST, "--bandwidth", str(args.bandwidth), "--wait", "--json"]
    # Exit 1: the session ended other than completed (the policy gave up); its record says why.
    timed = run_timed(argv, f"ferry migrate {GUEST} --to {DEST}", max(args.deadline, 120.0) * 3 + 60, accept=(0, 1))
    session = session_record(timed.stdout)
    completed = session.state == SessionState.COMPLETED
    if completed != (timed.returncode == 0) or not session.state.terminal:
        raise BenchError(f"ferry migrate exited {timed.returncode} with the session {session.state}.")
    if completed and session.dest != DEST:
        raise BenchError(f"Ferry's session {session.id} completed to {session.dest}, not {DEST}.")
    runs_on = settled_host(lab, DEST if completed else SOURCE, f"ferry's session ended {session.state}")
    outcome = session.outcome if completed else None
    if completed and outcome is None:
        raise BenchError(f"Ferry's session {session.id} completed without an outcome.")
    last = last_progress(session)
    max_downtime_ms, throttle_pct = lever_peaks(session)
    return Attempt(
        round,
        FERRY_METHOD,
        completed,
        timed.seconds,
        ferry_end(session),
        runs_on,
        downtime_ms=float(outcome.downtime_ms) if outcome else None,
        job_ms=outcome.total_time_ms if outcome else None,
        data_bytes=outcome.data_transferred if outcome else (last.data_processed if last else None),
        last_sample=msgspec.to_builtins(last) if last else None,
        actions=action_counts(session),
        max_downtime_ms=max_downtime_ms,
        throttle_pct=throttle_pct,
        session_id=session.id,
    )


TRIERS = {VIRSH_METHOD: try_with_virsh, FERRY_METHOD: try_with_ferry}


def move_back(lab: Lab) -> None:
    """Not timed: back to hv1 with Ferry and no cap (loopback is fast enough for the busy guest)."""
    argv = [FERRY, *lab.cli_args(), "migrate", GUEST, "--to", SOURCE, "--wait", "--json"]
    timed = run_timed(argv, f"ferry migrate {GUEST} back to {SOURCE}", MOVE_BACK_TIMEOUT)
    console.print(f"    back to {SOURCE} in {timed.seconds:.1f} s (not timed)")
    settled_host(lab, SOURCE, "moving the guest back")


def predict(lab: Lab, args: argparse.Namespace) -> Prediction | None:
    """What Ferry predicts for plain pre-copy, from the guest's dirty rate measured now."""
    request = MigrateRequest(vm=GUEST, source=SOURCE, dest=DEST, options=MigrateOptions(bandwidth_mib=args.bandwidth))
    reply: PlanReply | None = ask_coordinator(lab, lambda client: client.plan(request), timeout=30)
    return reply.prediction if reply else None


def prepare(lab: Lab, args: argparse.Namespace) -> Prediction | None:
    bring_up(lab, args.address_base)
    console.print(f"starting {GUEST} on {SOURCE} ({args.memory} MiB, dirtying {args.dirty_mb} MiB/s) ...")
    lab.create_guest(GUEST, SOURCE, memory_mib=args.memory, dirty_mb=args.dirty_mb)
    lab.wait_for_tick(GUEST, SOURCE, 3)
    prediction = predict(lab, args)
    if prediction is not None:
        console.print(
            f"measured dirty rate {prediction.dirty_rate_bps / MIB:.1f} MiB/s at a {args.bandwidth} MiB/s cap: "
            f"plain pre-copy {'converges' if prediction.converges else 'does not converge'} ({prediction.reason})"
        )
    return prediction


def measure(lab: Lab, args: argparse.Namespace, attempts: list[Attempt]) -> None:
    for round, method in schedule(args.rounds):
        ready_on_source(lab)
        console.print(f"  round {round}: {method} ...")
        attempt = TRIERS[method](lab, round, args)
        attempts.append(attempt)
        down = f"downtime {attempt.downtime_ms:.0f} ms" if attempt.downtime_ms is not None else "no downtime"
        console.print(
            f"  round {round}: {method:5} {attempt.total_s:6.1f} s  {attempt.end}; {down}; on {attempt.runs_on}"
            + (f"; policy: {_levers(attempt)}" if attempt.actions else "")
        )
        if attempt.runs_on != SOURCE:
            move_back(lab)


# ---- output -----------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _passes(attempt: Attempt) -> str:
    return str(attempt.last_sample.get("iteration", "-")) if attempt.last_sample else "-"


def _levers(attempt: Attempt) -> str:
    """``set_downtime x5 (to 300 ms), auto_converge_engaged x4 (to 90 %)``; "-" when the policy did nothing."""
    peaks = {"set_downtime": (attempt.max_downtime_ms, "ms"), "auto_converge_engaged": (attempt.throttle_pct, "%")}
    parts = []
    for kind, count in attempt.actions.items():
        peak, unit = peaks.get(kind, (None, ""))
        parts.append(f"{kind} x{count}" + (f" (to {peak} {unit})" if peak is not None else ""))
    return ", ".join(parts) or "-"


def print_rounds(attempts: Sequence[Attempt]) -> None:
    table = Table(title="Moving a busy guest hv1 -> hv2, round by round", header_style="bold")
    for column in ("round", "method", "completed", "total s", "downtime ms", "passes", "policy actions"):
        table.add_column(column, justify="left" if column in ("method", "policy actions") else "right")
    rounds = sorted({a.round for a in attempts})
    for round in rounds:
        for a in (a for a in attempts if a.round == round):
            table.add_row(
                str(round), a.method, "yes" if a.completed else "no", f"{a.total_s:.1f}",
                _fmt(a.downtime_ms, ".0f"), _passes(a), _levers(a),
            )
        table.add_section()
    console.print(table)
    for round in rounds:
        mine = [a for a in attempts if a.round == round]
        value, note = total_time_ratio([a for a in mine if a.method == VIRSH_METHOD], [a for a in mine if a.method == FERRY_METHOD])
        ends = "; ".join(f"{a.method} {a.end}" for a in mine)
        console.print(f"round {round}: total time ferry/virsh {_fmt(value, '.2f') if value is not None else f'-, {note}'} ({ends})")


def print_summary(summary: dict[str, Any]) -> None:
    table = Table(
        title="Summary", caption="total: the command, start to exit; times and downtime of the completed attempts", header_style="bold"
    )
    for column in ("method", "completed", "total med s", "downtime med ms", "job med s"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method in METHODS:
        m = summary["methods"][method]
        table.add_row(
            method, f"{m['completed']}/{m['attempts']}", _fmt(m["completed_total_s_median"], ".1f"),
            _fmt(m["downtime_ms_median"], ".0f"), _fmt(m["job_s_median"], ".1f"),
        )
    console.print(table)
    if summary["ratio_total_time"] is not None:
        console.print(f"total time ferry/virsh: {summary['ratio_total_time']:.2f}")
    else:
        console.print(f"total time ferry/virsh: no ratio, {summary['ratio_note']}")


def write_json(
    path: Path, args: argparse.Namespace, started: datetime, attempts: list[Attempt], prediction: Prediction | None, **extra: Any
) -> None:
    document = {
        "benchmark": "convergence",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "rounds": args.rounds,
            "hosts": HOSTS,
            "address_base": args.address_base,
            "guest": GUEST,
            "memory_mib": args.memory,
            "dirty_mb": args.dirty_mb,
            "bandwidth_mib": args.bandwidth,
            "deadline_s": args.deadline,
            "virsh_command": f"virsh migrate {' '.join(VIRSH_MIGRATE_FLAGS)} --bandwidth {args.bandwidth} GUEST {DEST}; "
            f"virsh domjobabort GUEST after {args.deadline:g} s",
            "ferry_command": f"ferry migrate GUEST --to {DEST} --bandwidth {args.bandwidth} --wait --json (default policy)",
        },
        "prediction": msgspec.to_builtins(prediction) if prediction else None,
        "attempts": [asdict(a) for a in attempts],
        **extra,
    }
    write_results(path, document)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.convergence", description=__doc__.split("\n\n")[0])
    add_run_arguments(
        parser, rounds=1, rounds_help="rounds; each tries once with each method",
        memory=256, memory_help="guest memory", dirty_mb=64, dirty_help="memory the guest rewrites per second",
    )
    parser.add_argument("--bandwidth", type=int, default=16, metavar="MiB/s", help="bandwidth cap for both methods (default 16)")
    parser.add_argument("--deadline", type=float, default=120.0, metavar="S", help="virsh is aborted after this long (default 120)")
    return parse_checked(
        parser,
        argv,
        lambda args: [
            (args.bandwidth < 1, "--bandwidth must be at least 1 MiB/s (the benchmark needs a cap)"),
            (not args.deadline > 0, "--deadline must be positive"),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    result_file = args.dir / "convergence.json"
    attempts: list[Attempt] = []
    prediction: list[Prediction | None] = [None]

    def body(lab: Lab) -> None:
        prediction[0] = prepare(lab, args)
        measure(lab, args, attempts)
        continuity = lab.continuity(GUEST)
        if not continuity.ok or len(continuity.boot_ids) != 1:
            raise BenchError(f"{GUEST} did not keep running across the attempts: {continuity.explain()}.")
        console.print(f"continuity: {continuity.explain()}")
        summary = summarize(attempts)
        write_json(result_file, args, started, attempts, prediction[0], **summary, continuity=continuity.explain())
        print_rounds(attempts)
        print_summary(summary)
        console.print(f"results: {result_file}")

    def save_partial(error: str) -> None:
        if attempts:
            write_json(result_file, args, started, attempts, prediction[0], error=error)
            console.print(f"the attempts measured before that: {result_file}")

    return run_in_lab(args, HOSTS, body, save_partial)


if __name__ == "__main__":
    sys.exit(main())
