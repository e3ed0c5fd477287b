"""Scale: one leader and one standby coordinator against thousands of hosts.

    python -m bench.scale --hosts 500 --hosts 2000 --hosts 5000

For each size, in one run: a nats-server of its own (loopback, JetStream), two
real coordinators (the first to start leads), a fleet of simulated agents
(tests/support/fleet.py: hosts that answer every agent verb, for the moves
that really run) and, for the rest of the hosts, bench/heartbeats.py: one
light process publishing what real agents send (ten VMs each, checks,
versions, networks) at the real interval. So the coordinators are what is
measured. For each size it prints, for the leader and the standby:

- CPU (% of one core) and RSS at steady state (a window with nothing asked);
- seconds until every host is `up`, from the first heartbeat;
- `ferry hosts --json` (the CLI, every page) and the hosts request alone;
- placement for `ferry migrate --dry-run`: the request, and the placement
  inside it (the coordinator's own timing; the dirty-rate measurement on the
  source agent is reported apart);
- an admission pass with 1,000 queued sessions (the leader's
  `ferry_admission_pass_seconds`);
- a drain of 20 hosts at once: sessions per second through the scheduler;
- the baseline, in the same run: CPU at steady state when the same hosts send
  their full report at every heartbeat (as agents did before short beats), and
  the ratio of the two.

Writes DIR/scale.json. Exit status 0 means every size was measured; the goals
are printed beside the figures, not enforced (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.common import DEFAULT_DIR, FERRY, BenchError, console, median, run_timed, write_results
from bench.heartbeats import host_name
from bench.sessions_history import Process, nats_server_binary
from ferry.cli.client import FerryClient
from ferry.lab.nats import free_ports, wait_jetstream
from ferry.lab.processes import cpu_seconds, rss_mib
from ferry.proto.api import MigrateRequest
from ferry.proto.drain import DrainRequest, DrainState, ItemState
from ferry.proto.errors import FerryError
from ferry.proto.limits import LimitsRequest
from ferry.proto.session import SessionState
from ferry.runtime.config import NatsSettings
from tests.support.fleet import write_fleet

SIZES = (500, 2000, 5000)
INTERVAL = 2.0
STEADY_SECONDS = 20.0
ROUNDS = 20
PLACEMENTS = 50
QUEUED = 1000
DRAINED = 20
# Simulated agents: the drained hosts, as many with room to take their VMs, and
# two slow senders whose moves hold the cluster's slots while 1,000 sessions queue.
FLEET_VMS = 10
SLOW_SENDERS = 2
GOALS = {"cpu_percent": 50.0, "rss_mib": 1024.0, "appear_seconds": 10.0, "placement_p99_ms": 10.0,
         "hosts_json_seconds": 0.5, "admission_pass_ms": 50.0}


def coordinator_toml(name: str, url: str, metrics_port: int) -> str:
    return f"""
name = "{name}"
metrics_address = "127.0.0.1:{metrics_port}"
log_level = "warning"
[nats]
servers = ["{url}"]
request_timeout = 10.0
"""


# ---- reading a coordinator ----------------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ---- one size ----------------------------------------------------------------------


class Run:
    """One size: its processes and the figures measured on them."""

    def __init__(self, work: Path, hosts: int, interval: float) -> None:
        self.work = work
        self.hosts = hosts
        self.interval = interval
        self.processes: list[Process] = []
        port, self.metrics_ports = free_ports(1)[0], free_ports(2)
        self.url = f"nats://127.0.0.1:{port}"
        conf = work / "nats.conf"
        conf.write_text(f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{work / "js"}" }}\n')
        self.server = self._start([nats_server_binary(), "-c", str(conf)], "nats")
        self.coordinators: dict[str, Process] = {}
        self.heartbeats: Process | None = None

    def _start(self, argv: list[str], name: str) -> Process:
        process = Process(argv, self.work / f"{name}.log")
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def start_coordinators(self) -> None:
        wait_jetstream([self.url], replicas=1)
        for name, port in zip(("c1", "c2"), self.metrics_ports):
            path = self.work / f"{name}.toml"
            path.write_text(coordinator_toml(name, self.url, port))
            self.coordinators[name] = self._start([str(Path(FERRY).parent / "ferry-coordinator"), "--config", str(path)], name)
            if name == "c1":
                asyncio.run(until(lambda c: leader_is(c, "c1"), self.url, 60, "c1 leads"))

    def start_fleet(self) -> list[str]:
        """Simulated agents: sim01.. drained, then as many with room, then the slow senders."""
        folder = self.work / "fleet"
        fast = write_fleet(folder, self.url, 2 * DRAINED, FLEET_VMS, cpus=64, memory_mib=1024 * 1024,
                           vm_memory_mib=1024, speed_mib_per_s=4096, heartbeat_interval=self.interval,
                           health_interval=10.0, name_format="sim{:02d}")
        slow = write_fleet(folder, self.url, SLOW_SENDERS, 1, cpus=64, memory_mib=1024 * 1024, vm_memory_mib=1024,
                           speed_mib_per_s=1, heartbeat_interval=self.interval, health_interval=10.0,
                           name_format="slow{:02d}")
        self._start([sys.executable, "-m", "tests.support.fleet", "--config-dir", str(folder)], "fleet")
        return fast + slow

    def start_heartbeats(self, count: int, *, full_only: bool = False) -> None:
        """The simulated hosts' heartbeats; `full_only`: as agents from before short beats (the baseline)."""
        if self.heartbeats is not None:
            self.heartbeats.stop()
            self.processes.remove(self.heartbeats)
        self.heartbeats = self._start(
            [sys.executable, "-m", "bench.heartbeats", "--server", self.url, "--hosts", str(count),
             "--interval", str(self.interval), *(["--full-only"] if full_only else [])],
            "heartbeats-full" if full_only else "heartbeats",
        )


async def until(check, url: str, timeout: float, what: str, via: str = "", every: float = 0.25):
    settings = NatsSettings(servers=[url], request_timeout=10.0)
    deadline = time.monotonic() + timeout
    async with await FerryClient.connect(settings, via=via) as client:
        while True:
            try:
                found = await check(client)
            except FerryError:
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: not reached within {timeout:.0f} s.")
            await asyncio.sleep(every)


async def leader_is(client: FerryClient, name: str) -> bool:
    status = await client.status()
    return status.leader is not None and status.leader.holder == name


async def appear_seconds(url: str, hosts: int, started: float, timeout: float) -> dict[str, float]:
    """Seconds from `started` until each coordinator reports every host up."""

    async def one(name: str) -> float:
        async def all_up(client: FerryClient) -> bool:
            return (await client.status()).hosts_up >= hosts

        await until(all_up, url, timeout, f"{hosts} hosts up at {name}", via=name)
        return time.monotonic() - started

    c1, c2 = await asyncio.gather(one("c1"), one("c2"))
    return {"c1": c1, "c2": c2}


def steady_state(run: Run, seconds: float) -> dict[str, dict[str, float]]:
    pids = {name: p.proc.pid for name, p in run.coordinators.items()}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {
        name: {"cpu_percent": 100 * (cpu_seconds(pid) - before[name]) / seconds, "rss_mib": rss_mib(pid)}
        for name, pid in pids.items()
    }


async def hosts_requests(url: str, via: str, rounds: int) -> dict[str, Any]:
    settings = NatsSettings(servers=[url], request_timeout=30.0)
    async with await FerryClient.connect(settings, via=via) as client:
        times, counts = [], []
        for _ in range(rounds):
            started = time.monotonic()
            reply = await client.hosts()
            times.append(time.monotonic() - started)
            counts.append(len(reply.hosts))
    return {"median": median(times), "p99": percentile(times, 0.99), "hosts": max(counts)}


def hosts_cli(url: str, via: str, rounds: int) -> dict[str, float | None]:
    """`ferry hosts --json` (each host with its VM count) and `--json --vms` (with every VM list)."""
    argv = [FERRY, "--server", url, "--timeout", "30", *(["--via", via] if via else []), "hosts", "--json"]
    return {
        "json": median([run_timed(argv, "ferry hosts --json", timeout=120).seconds for _ in range(rounds)]),
        "vms": median([run_timed([*argv, "--vms"], "ferry hosts --json --vms", timeout=120).seconds for _ in range(rounds)]),
    }


async def placements(url: str, via: str, vm: str, rounds: int) -> dict[str, Any]:
    settings = NatsSettings(servers=[url], request_timeout=30.0)
    async with await FerryClient.connect(settings, via=via) as client:
        requests, placing, measuring, candidates = [], [], [], 0
        for _ in range(rounds):
            started = time.monotonic()
            plan = await client.plan(MigrateRequest(vm=vm))
            requests.append(1000 * (time.monotonic() - started))
            placing.append(plan.placement_ms)
            measuring.append(plan.measure_ms)
            candidates = plan.candidate_count
    return {
        "request_median_ms": median(requests), "request_p99_ms": percentile(requests, 0.99),
        "placement_median_ms": median(placing), "placement_p99_ms": percentile(placing, 0.99),
        "measure_median_ms": median(measuring), "candidates": candidates,
    }


async def admission(run: Run, window: float) -> dict[str, Any]:
    """1,000 sessions queued behind two slow moves that hold the cluster's two slots."""
    settings = NatsSettings(servers=[run.url], request_timeout=30.0)
    port = run.metrics_ports[0]
    async with await FerryClient.connect(settings) as client:
        await client.limits(LimitsRequest(cluster=SLOW_SENDERS))
        holders = [await client.migrate(MigrateRequest(vm=f"slow{i:02d}-vm1")) for i in range(1, SLOW_SENDERS + 1)]

        async def migrating(c: FerryClient) -> bool:
            states = [(await c.session(s.id)).state for s in holders]
            if any(state.terminal for state in states):
                raise BenchError(f"a slow move that was to hold the cluster's slots ended: {states}")
            return all(state == SessionState.MIGRATING for state in states)

        await until(migrating, run.url, 60, "the slow moves migrating")
        queued = []
        sources = [host_name(i) for i in range(1, QUEUED // 10 + 1)]
        for host in sources:
            for n in range(10):
                queued.append(await client.migrate(MigrateRequest(vm=f"{host}-vm{n:02d}")))
        text = await asyncio.to_thread(scrape, port)
        count0, sum0 = metric(text, "ferry_admission_pass_seconds_count"), metric(text, "ferry_admission_pass_seconds_sum")
        await asyncio.sleep(window)
        text = await asyncio.to_thread(scrape, port)
        count1, sum1 = metric(text, "ferry_admission_pass_seconds_count"), metric(text, "ferry_admission_pass_seconds_sum")
        queued_now = metric(text, "ferry_migration_queue_depth")
        for session in [*queued, *holders]:
            try:
                await client.cancel(session.id)
            except FerryError:
                pass  # ended meanwhile
        await client.limits(LimitsRequest(reset=True))
    passes = count1 - count0
    return {"passes": passes, "mean_ms": 1000 * (sum1 - sum0) / passes if passes else None,
            "last_ms": 1000 * metric(text, "ferry_admission_last_pass_seconds"), "queued": queued_now}


async def drain_throughput(run: Run) -> dict[str, Any]:
    settings = NatsSettings(servers=[run.url], request_timeout=30.0)
    drained = [f"sim{i:02d}" for i in range(1, DRAINED + 1)]
    async with await FerryClient.connect(settings) as client:
        await client.limits(LimitsRequest(cluster=4 * DRAINED))
        started = time.monotonic()
        await asyncio.gather(*(client.drain(DrainRequest(host=h)) for h in drained))

        async def all_done(c: FerryClient) -> list | None:
            drains = [d for d in await c.drains() if d.host in drained]
            return drains if drains and all(d.state != DrainState.RUNNING for d in drains) else None

        drains = await until(all_done, run.url, 600, f"the drains of {DRAINED} hosts", every=0.5)
        took = time.monotonic() - started
        await client.limits(LimitsRequest(reset=True))
    moved = sum(1 for d in drains for item in d.items if item.state == ItemState.MOVED)
    return {"hosts": DRAINED, "sessions": moved, "seconds": took, "sessions_per_second": moved / took,
            "all_done": all(d.state == DrainState.DONE for d in drains)}


def measure(size: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    run = Run(work, size, args.interval)
    try:
        run.start_coordinators()
        fleet = run.start_fleet()
        started = time.monotonic()
        run.start_heartbeats(size - len(fleet))
        result: dict[str, Any] = {"hosts": size, "vms": (size - len(fleet)) * 10 + len(fleet) * FLEET_VMS}
        result["appear_seconds"] = asyncio.run(appear_seconds(run.url, size, started, 120))
        time.sleep(2 * args.interval)  # past the arrival burst
        result["steady"] = steady_state(run, args.steady)
        result["hosts_request"] = {via: asyncio.run(hosts_requests(run.url, via, args.rounds)) for via in ("c1", "c2")}
        result["hosts_cli_seconds"] = {via: hosts_cli(run.url, via, 5) for via in ("c1", "c2")}
        result["placement"] = {via: asyncio.run(placements(run.url, via, "sim01-vm1", args.placements)) for via in ("c1", "c2")}
        result["admission"] = asyncio.run(admission(run, 10.0))
        result["drain"] = asyncio.run(drain_throughput(run))
        # The baseline, same run: the same hosts sending their full report every time.
        run.start_heartbeats(size - len(fleet), full_only=True)
        time.sleep(3 * args.interval)
        result["steady_full_reports"] = steady_state(run, args.steady)
        result["cpu_ratio"] = {
            via: result["steady"][via]["cpu_percent"] / max(result["steady_full_reports"][via]["cpu_percent"], 0.01)
            for via in ("c1", "c2")
        }
        return result
    finally:
        run.stop()


def report(results: list[dict[str, Any]]) -> None:
    table = Table(title="Ferry at scale: one leader (c1) and one standby (c2), 2 s heartbeats")
    columns = ["hosts", "VMs", "", "CPU %", "RSS MiB", "all up s", "hosts req s", "ferry hosts --json s (/ --vms)",
               "place p50/p99 ms", "dry-run req p99 ms", "admission pass ms", "drain sessions/s"]
    for column in columns:
        table.add_column(column, justify="right")
    for r in results:
        for via in ("c1", "c2"):
            leader = via == "c1"
            place = r["placement"][via]
            table.add_row(
                f"{r['hosts']:,}" if leader else "", f"{r['vms']:,}" if leader else "", "leader" if leader else "standby",
                f"{r['steady'][via]['cpu_percent']:.1f}", f"{r['steady'][via]['rss_mib']:.0f}",
                f"{r['appear_seconds'][via]:.1f}", f"{r['hosts_request'][via]['median']:.3f}",
                f"{r['hosts_cli_seconds'][via]['json']:.2f} / {r['hosts_cli_seconds'][via]['vms']:.2f}",
                f"{place['placement_median_ms']:.1f}/{place['placement_p99_ms']:.1f}", f"{place['request_p99_ms']:.0f}",
                f"{r['admission']['mean_ms']:.1f}" if leader and r["admission"]["mean_ms"] is not None else "",
                f"{r['drain']['sessions_per_second']:.1f}" if leader else "",
            )
    console.print(table)
    for r in results:
        full = r["steady_full_reports"]
        console.print(
            f"{r['hosts']:,} hosts, baseline (full reports every heartbeat, same run): CPU leader "
            f"{full['c1']['cpu_percent']:.1f} %, standby {full['c2']['cpu_percent']:.1f} %; ratio short beats / full: "
            f"leader {r['cpu_ratio']['c1']:.2f}, standby {r['cpu_ratio']['c2']:.2f}"
        )
    console.print(f"goals: {GOALS}; the dirty-rate measurement of a dry run (median ms): "
                  + ", ".join(f"{r['hosts']}: {r['placement']['c1']['measure_median_ms']:.0f}" for r in results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, action="append", help="a size to measure (repeatable)")
    parser.add_argument("--interval", type=float, default=INTERVAL)
    parser.add_argument("--steady", type=float, default=STEADY_SECONDS, help="seconds of the steady-state window")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--placements", type=int, default=PLACEMENTS)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    sizes = args.hosts or list(SIZES)
    minimum = 2 * DRAINED + SLOW_SENDERS + QUEUED // 10
    if min(sizes) < minimum:
        parser.error(f"--hosts must be at least {minimum} (the simulated agents and the queued sessions' sources)")
    results = []
    try:
        for size in sizes:
            console.print(f"measuring {size:,} hosts ...")
            with tempfile.TemporaryDirectory(prefix="ferry-bench-scale-") as folder:
                results.append(measure(size, args, Path(folder)))
    except BenchError as error:
        console.print(f"[red]bench.scale: {error}[/red]")
        return 1
    report(results)
    write_results(args.dir / "scale.json", {"interval": args.interval, "goals": GOALS, "results": results})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
