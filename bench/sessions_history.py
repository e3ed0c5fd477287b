"""`ferry sessions --limit 50` with 20,000 finished sessions: the hot bucket
whole (how every session was kept before the archive) against the hot bucket
after the archiver (finished sessions in the `FERRY_SESSIONS` stream).

Starts a nats-server of its own (loopback, JetStream, no lab hosts) and writes
N finished sessions, ended over the last weeks, straight into the sessions
bucket. Then, in the same run:

1. baseline: a coordinator that keeps finished sessions hot for 30 days, so
   all N stay in the bucket and every request reads each key;
2. Ferry: a coordinator with the default `keep_finished` (1 h) that archives
   them (the time that takes is reported too), then the same requests.

Each layout is measured as the operator sees it (`ferry sessions --limit 50`,
the whole CLI process) and as the request alone (one connection, R rounds).
Prints a table and writes DIR/sessions_history.json. Exit status 0 means the
measurement ran; the page is checked to hold the 50 newest either way.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from rich.table import Table

from bench.common import DEFAULT_DIR, FERRY, BenchError, console, median, ratio, run_timed, write_results
from ferry.cli.client import FerryClient
from ferry.coordinator.kv import Bucket, keys_of
from ferry.coordinator.session_store import BUCKET, SessionStore
from ferry.lab.nats import free_ports, wait_jetstream
from ferry.proto.api import SessionsRequest
from ferry.proto.session import MigrateOptions, Session, SessionState, Transition
from ferry.runtime.config import NatsSettings

SESSIONS = 20_000
LIMIT = 50
ROUNDS = 7
# Sessions ended from 2 to 27 days ago: all older than the default keep_finished,
# all younger than the baseline's.
OLDEST_DAYS = 27.0
NEWEST_DAYS = 2.0
BASELINE_KEEP = 30 * 86400.0
WRITERS = 64


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise BenchError("nats-server is not installed: run `make venv` (the dev extras bring it).")
    return found


def finished_session(i: int, count: int, now: float) -> Session:
    """A completed move as the coordinator records one: four transitions, a progress-free end."""
    span = (OLDEST_DAYS - NEWEST_DAYS) * 86400.0
    ended = now - OLDEST_DAYS * 86400.0 + span * i / max(count - 1, 1)
    started = ended - 20.0
    steps = [SessionState.QUEUED, SessionState.PREPARING, SessionState.MIGRATING, SessionState.COMPLETED]
    history = [Transition(at=started + 5 * n, state=state, reason="") for n, state in enumerate(steps)]
    return Session(
        id=f"b{i:07d}", vm=f"vm-{i % 5000:04d}", source=f"hv{i % 97}", options=MigrateOptions(),
        state=SessionState.COMPLETED, created_at=started, updated_at=ended, dest=f"hv{(i + 1) % 97}", history=history,
    )


def coordinator_toml(url: str, keep_finished: float, archive_every: float) -> str:
    return f"""
name = "bench"
metrics_address = ""
[nats]
servers = ["{url}"]
[history]
keep_finished = {keep_finished}
archive_every = {archive_every}
"""


class Process:
    """A daemon of this run, stopped by it."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self._log = log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


async def write_sessions(url: str, count: int) -> tuple[list[str], float]:
    """The ids, oldest first, and the seconds it took."""
    nc = await nats.connect(url)
    try:
        store = await SessionStore.open(nc.jetstream())
        now = time.time()
        sessions = [finished_session(i, count, now) for i in range(count)]
        started = time.monotonic()
        for at in range(0, count, WRITERS):
            await asyncio.gather(*(store.create(s) for s in sessions[at : at + WRITERS]))
        return [s.id for s in sessions], time.monotonic() - started
    finally:
        await nc.close()


async def hot_keys(url: str) -> int:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        return len(await keys_of(Bucket(await js.key_value(BUCKET), js, BUCKET)))
    finally:
        await nc.close()


async def request_rounds(url: str, rounds: int, limit: int) -> tuple[list[float], list[str]]:
    """Seconds per `sessions` request (one connection) and the ids of the last page."""
    settings = NatsSettings(servers=[url], request_timeout=120.0)
    async with await FerryClient.connect(settings) as client:
        times, ids = [], []
        for _ in range(rounds):
            started = time.monotonic()
            page = await client.sessions_page(SessionsRequest(limit=limit))
            times.append(time.monotonic() - started)
            ids = [s.id for s in page.sessions]
        return times, ids


async def answering(url: str, timeout: float) -> None:
    settings = NatsSettings(servers=[url], request_timeout=2.0)
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with await FerryClient.connect(settings) as client:
                await client.status()
                return
        except Exception as error:  # not connected yet, or no coordinator answering yet
            if time.monotonic() > deadline:
                raise BenchError(f"the coordinator did not answer within {timeout:.0f} s ({error}).") from None
            await asyncio.sleep(0.3)


def measure(url: str, rounds: int, limit: int, newest: list[str]) -> dict[str, Any]:
    argv = [FERRY, "--server", url, "--timeout", "120", "sessions", "--limit", str(limit), "--json"]
    cli = [run_timed(argv, "ferry sessions", timeout=300).seconds for _ in range(rounds)]
    requests, ids = asyncio.run(request_rounds(url, rounds, limit))
    if ids != newest:
        raise BenchError(f"the page held {len(ids)} sessions, not the {len(newest)} newest ({ids[:3]}...).")
    return {"cli_seconds": cli, "request_seconds": requests, "cli_median": median(cli), "request_median": median(requests)}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    (client_port,) = free_ports(1)
    url = f"nats://127.0.0.1:{client_port}"
    conf = work / "nats.conf"
    conf.write_text(f'listen: 127.0.0.1:{client_port}\njetstream {{ store_dir: "{work / "js"}" }}\n')
    server = Process([nats_server_binary(), "-c", str(conf)], work / "nats.log")
    coordinator: Process | None = None
    try:
        wait_jetstream([url], replicas=1)
        console.print(f"writing {args.sessions:,} finished sessions into the sessions bucket ...")
        ids, wrote = asyncio.run(write_sessions(url, args.sessions))
        newest = ids[-args.limit :]
        result: dict[str, Any] = {"sessions": args.sessions, "limit": args.limit, "rounds": args.rounds, "write_seconds": wrote}

        def start(name: str, keep: float, every: float) -> Process:
            path = work / f"{name}.toml"
            path.write_text(coordinator_toml(url, keep, every))
            daemon = Process([str(Path(FERRY).parent / "ferry-coordinator"), "--config", str(path)], work / f"{name}.log")
            asyncio.run(answering(url, 60))
            return daemon

        console.print("baseline: every session in the hot bucket ...")
        coordinator = start("baseline", BASELINE_KEEP, 3600)
        result["baseline"] = measure(url, args.rounds, args.limit, newest) | {"hot_keys": asyncio.run(hot_keys(url))}
        coordinator.stop()

        console.print("ferry: the archiver moves them to the archive stream ...")
        started = time.monotonic()
        coordinator = start("archiving", 3600.0, 1.0)
        while (left := asyncio.run(hot_keys(url))) > 0:
            if time.monotonic() - started > 600:
                raise BenchError(f"the archiver left {left} sessions in the hot bucket after 600 s.")
            time.sleep(0.5)
        result["archive_seconds"] = time.monotonic() - started
        result["ferry"] = measure(url, args.rounds, args.limit, newest) | {"hot_keys": 0}
        coordinator.stop()
        coordinator = None
        return result
    finally:
        if coordinator is not None:
            coordinator.stop()
        server.stop()


def report(result: dict[str, Any]) -> None:
    table = Table(title=f"ferry sessions --limit {result['limit']} with {result['sessions']:,} finished sessions (median of {result['rounds']})")
    for column in ("layout", "hot keys", "CLI (s)", "request (s)"):
        table.add_column(column, justify="right" if column != "layout" else "left")
    for name, label in (("baseline", "all in the hot bucket"), ("ferry", "archived (keep_finished 1 h)")):
        row = result[name]
        table.add_row(label, f"{row['hot_keys']:,}", f"{row['cli_median']:.3f}", f"{row['request_median']:.4f}")
    console.print(table)
    console.print(
        f"ratio ferry / baseline: CLI {result['cli_ratio']:.3f}, request {result['request_ratio']:.4f}; "
        f"writing took {result['write_seconds']:.1f} s, archiving {result['archive_seconds']:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions_history", description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=SESSIONS)
    parser.add_argument("--limit", type=int, default=LIMIT)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    if args.sessions < args.limit:
        parser.error("--sessions must be at least --limit")
    try:
        with tempfile.TemporaryDirectory(prefix="ferry-bench-history-") as folder:
            result = run(args, Path(folder))
    except BenchError as error:
        console.print(f"[red]bench.sessions_history: {error}[/red]")
        return 1
    result["cli_ratio"] = ratio(result["ferry"]["cli_median"], result["baseline"]["cli_median"])
    result["request_ratio"] = ratio(result["ferry"]["request_median"], result["baseline"]["request_median"])
    report(result)
    write_results(args.dir / "sessions_history.json", result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
