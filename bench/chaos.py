"""Chaos: kill -9 a part of the control plane while guests move, and count what broke.

Starts a lab of its own (3 hosts, three clustered nats-servers, agents, a
leader and a standby coordinator) with a few busy guests (one with a local
disk, copied along when it moves). Each round starts moves (every guest to
another host, or a drain of one host), waits until a migration is under way
plus a random moment, kills with SIGKILL the leading coordinator (`leader`:
the standby takes over), both coordinators (`coordinators`), the source agent
or the destination agent of a running migration, or one of the nats-servers
(`nats-node`, drawn at random), starts it again after a random delay, and
waits for every session of the round to end. Then it audits:

- every guest runs in exactly one place (else it is `lost` or `doubled`),
  keeps ticking there and was never restarted;
- every session ended within its deadline (else `stuck`) and agrees with
  libvirt (completed: the guest runs on its destination; otherwise on its source);
- no VM claim, no reservation and no stray domain is left; images left behind
  (local-disk copies on a host the guest no longer runs on) are counted.

Prints a line per round and a table per fault (rounds, sessions, VMs lost,
doubled, sessions stuck, leftovers, images left, worst time from the kill to
the last session's end, and for `leader` the worst time until the standby
led) and writes DIR/chaos.json. Exit status 0 means the
measurement ran, whatever it found; `--strict` makes any loss, double, stuck
session or leftover exit 1 (`make test` runs a small sample that way).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import nats
import nats.js.errors
from rich.table import Table

from bench.common import add_lab_arguments, bring_up, console, run_in_lab, write_results
from ferry.cli.client import FerryClient
from ferry.coordinator import session_steps
from ferry.coordinator.agents import AgentClient
from ferry.coordinator.kv import Bucket, keys_of
from ferry.coordinator.session_store import CLAIMS_BUCKET
from ferry.lab.errors import LabError
from ferry.lab.lab import COORDINATOR_ROLES, NATS_ROLES, Lab, agent_role, coordinator_role
from ferry.lab.nats_security import LAB_TOOLS
from ferry.proto.agent import JobRole, JobsRequest
from ferry.proto.api import MigrateRequest
from ferry.proto.drain import DrainRequest, DrainState
from ferry.proto.errors import FerryError
from ferry.proto.session import MigrateOptions, Session, SessionCode, SessionState
from ferry.runtime.connection import identity_options
from ferry.runtime.identity import Role

T = TypeVar("T")
S = SessionState

FAULTS = ("leader", "coordinators", "source-agent", "dest-agent", "nats-node")
GUEST_MEMORY_MIB = 128
GUEST_DIRTY_MB = 4
LOCAL_DISK_MIB = 32
# Slow enough that a kill lands in the middle of the copy, fast enough for many rounds.
MOVE_BANDWIDTH_MIB = 16
# Every fourth round drains a host instead of moving each guest.
DRAIN_EVERY = 4
# Killed parts come back after this many seconds (uniformly drawn).
RESTART_DELAY = (0.5, 5.0)
# After a migration is under way, the kill waits this long (uniformly drawn).
KILL_DELAY = (0.0, 2.0)
# Beyond a session's own deadline before it counts as stuck.
STUCK_GRACE_SECONDS = 30.0
# Reservations lapse on their lease (30 s) when a rollback could not be delivered.
LEFTOVER_WAIT_SECONDS = 45.0


@dataclass
class RoundResult:
    fault: str
    number: int
    workload: str
    killed: str = ""
    sessions: int = 0
    lost: int = 0
    doubled: int = 0
    stuck: int = 0
    disagree: int = 0
    leftover_claims: int = 0
    leftover_reservations: int = 0
    leftover_domains: int = 0
    images_left: int = 0
    worst_seconds: float = 0.0
    # `leader`: seconds from the kill until another coordinator led.
    takeover_seconds: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (
            self.lost or self.doubled or self.stuck or self.disagree
            or self.leftover_claims or self.leftover_reservations or self.leftover_domains
        )


@dataclass
class FaultTally:
    fault: str
    rounds: int = 0
    sessions: int = 0
    lost: int = 0
    doubled: int = 0
    stuck: int = 0
    disagree: int = 0
    leftovers: int = 0
    images_left: int = 0
    worst_seconds: float = 0.0
    worst_takeover: float | None = None


def tally(results: Sequence[RoundResult]) -> list[FaultTally]:
    """One row per fault, in the order faults first appear. Pure."""
    rows: dict[str, FaultTally] = {}
    for r in results:
        row = rows.setdefault(r.fault, FaultTally(r.fault))
        row.rounds += 1
        row.sessions += r.sessions
        row.lost += r.lost
        row.doubled += r.doubled
        row.stuck += r.stuck
        row.disagree += r.disagree
        row.leftovers += r.leftover_claims + r.leftover_reservations + r.leftover_domains
        row.images_left += r.images_left
        row.worst_seconds = max(row.worst_seconds, r.worst_seconds)
        if r.takeover_seconds is not None:
            row.worst_takeover = max(row.worst_takeover or 0.0, r.takeover_seconds)
    return list(rows.values())


def agrees(session: Session, running_on: tuple[str, ...]) -> bool:
    """A finished session agrees with libvirt: completed, the guest runs on its
    destination; failed or cancelled, on its source. `not_confirmed` agrees with
    nothing (nobody could tell). Pure."""
    if session.state == S.COMPLETED:
        return running_on == (session.dest,)
    if session.code == SessionCode.NOT_CONFIRMED:
        return False
    return running_on == (session.source,)


# ----- talking to the lab's Ferry ----------------------------------------------


async def ask(lab: Lab, call: Callable[[FerryClient], Awaitable[T]], timeout: float = 5.0) -> T | None:
    """One call on a fresh connection (the nats-server may have been restarted); None when it fails."""
    try:
        settings = lab.nats_settings(request_timeout=timeout, connect_timeout=2.0)
        async with await FerryClient.connect(settings) as client:
            return await call(client)
    except (FerryError, OSError, TimeoutError, nats.errors.Error):
        return None


async def leftovers(lab: Lab) -> tuple[dict[str, str], list[str]]:
    """The VM claims left in KV (key -> session id), and the reservations the
    agents still hold ('host: session'), read over one connection."""
    nc = await nats.connect(servers=lab.nats_urls, connect_timeout=2, max_reconnect_attempts=0, **identity_options(lab.nats_settings(LAB_TOOLS, Role.COORDINATOR)))
    try:
        js = nc.jetstream()
        bucket = Bucket(await js.key_value(CLAIMS_BUCKET), js, CLAIMS_BUCKET)
        claims = {}
        for key in await keys_of(bucket):
            try:
                entry = await bucket.kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue  # released (deleted keys keep a marker in the stream)
            if entry.value:
                claims[key] = entry.value.decode()
        agents = AgentClient(nc, timeout=5.0)
        held = []
        for host in lab.hosts:
            jobs = await agents.jobs(host.name, JobsRequest())
            held += [f"{host.name}: {j.session_id}" for j in jobs.jobs if j.role == JobRole.DESTINATION and j.offer]
        return claims, held
    finally:
        await nc.close()


# ----- one round -----------------------------------------------------------------


class Chaos:
    def __init__(
        self, lab: Lab, guests: Sequence[str], rng: random.Random, *, local_disk: Sequence[str] = (), drain_every: int = DRAIN_EVERY
    ) -> None:
        self.lab = lab
        self.drain_every = drain_every
        self.guests = list(guests)
        self.local_disk = set(local_disk)
        self.rng = rng
        self.hosts = [h.name for h in lab.hosts]

    def where(self) -> dict[str, tuple[str, ...]]:
        return {g: r.running_on for g, r in self.lab.residency(*self.guests).items()}

    async def round(self, fault: str, number: int) -> RoundResult:
        lab, rng = self.lab, self.rng
        placed = await asyncio.to_thread(self.where)
        drain = number % self.drain_every == self.drain_every - 1
        started_at = time.time()
        result = RoundResult(fault, number, "drain" if drain else "moves")
        drained_host = ""
        if drain:
            drained_host = rng.choice([h for h in self.hosts if any(p == (h,) for p in placed.values())] or self.hosts)
            result.workload = f"drain {drained_host}"
            if await ask(lab, lambda c: c.drain(DrainRequest(host=drained_host))) is None:
                result.problems.append(f"the drain of {drained_host} could not be started")
        else:
            options = MigrateOptions(bandwidth_mib=MOVE_BANDWIDTH_MIB)
            for guest, hosts in placed.items():
                if len(hosts) != 1:
                    continue
                dest = rng.choice([h for h in self.hosts if h != hosts[0]])
                request = MigrateRequest(vm=guest, dest=dest, options=options)
                if await ask(lab, lambda c, r=request: c.migrate(r)) is None:
                    result.problems.append(f"could not start moving {guest} to {dest}")
        moving = await self._wait_migrating(started_at)
        await asyncio.sleep(rng.uniform(*KILL_DELAY))
        roles = await self._targets(fault, moving)
        result.killed = ", ".join(roles)
        killed_at = time.time()
        for role in roles:
            await asyncio.to_thread(lab.kill, role)
        if fault == "leader":
            result.takeover_seconds = await self._takeover(roles[0], killed_at, result)
        await asyncio.sleep(rng.uniform(*RESTART_DELAY))
        for role in roles:
            await asyncio.to_thread(lab.start, role)
        sessions = await self._wait_ended(started_at, result)
        if drained_host:
            await self._wait_drain(drained_host, result)
            await ask(lab, lambda c: c.undrain(drained_host))
        result.sessions = len(sessions)
        ended = [s.updated_at for s in sessions if s.state.terminal]
        result.worst_seconds = round(max([0.0, *(t - killed_at for t in ended)]), 1)
        await self._audit(sessions, result)
        return result

    async def _wait_migrating(self, since: float, timeout: float = 60.0) -> list[Session]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sessions = await ask(self.lab, lambda c: c.sessions()) or []
            moving = [s for s in sessions if s.created_at >= since and s.state in (S.MIGRATING, S.POSTCOPY)]
            if moving:
                return moving
            await asyncio.sleep(0.2)
        return []

    async def _targets(self, fault: str, moving: list[Session]) -> list[str]:
        if fault == "leader":
            return [await self._leader_role()]
        if fault == "coordinators":
            return list(COORDINATOR_ROLES)
        if fault == "nats-node":
            return [self.rng.choice(NATS_ROLES)]
        session = self.rng.choice(moving) if moving else None
        if session is None:
            host = self.rng.choice(self.hosts)
        else:
            host = session.source if fault == "source-agent" else (session.dest or session.source)
        return [agent_role(self.lab.host(host))]

    async def _leader_role(self) -> str:
        """The leading coordinator's role (the first one if none can be read)."""
        status = await ask(self.lab, lambda c: c.status())
        if status is None or status.leader is None:
            return COORDINATOR_ROLES[0]
        return coordinator_role(status.leader.holder)

    async def _takeover(self, killed: str, killed_at: float, result: RoundResult, timeout: float = 60.0) -> float | None:
        """Seconds from the kill until a coordinator other than `killed` leads."""
        while time.time() - killed_at < timeout:
            status = await ask(self.lab, lambda c: c.status(), timeout=2.0)
            if status is not None and status.leader is not None and coordinator_role(status.leader.holder) != killed:
                return round(time.time() - killed_at, 1)
            await asyncio.sleep(0.2)
        result.stuck += 1
        result.problems.append(f"no other coordinator led within {timeout:g} s of killing {killed}")
        return None

    async def _round_sessions(self, since: float) -> list[Session] | None:
        sessions = await ask(self.lab, lambda c: c.sessions())
        if sessions is None:
            return None
        return [s for s in sessions if s.created_at >= since]

    async def _wait_ended(self, since: float, result: RoundResult, cap: float = 900.0) -> list[Session]:
        """Until every session of the round has ended, or the last deadline (plus grace) has passed."""
        last: list[Session] = []
        give_up = time.monotonic() + cap
        while time.monotonic() < give_up:
            sessions = await self._round_sessions(since)
            if sessions is not None:
                last = sessions
                if all(s.state.terminal for s in sessions):
                    return sessions
                late = [s for s in sessions if not s.state.terminal and time.time() > session_steps.deadline(s) + STUCK_GRACE_SECONDS]
                if late:
                    result.stuck = len(late)
                    result.problems += [f"session {s.id} ({s.vm}) stuck in {s.state} past its deadline" for s in late]
                    return sessions
            await asyncio.sleep(0.5)
        open_ = [s for s in last if not s.state.terminal]
        result.stuck = max(result.stuck, len(open_) or 1)
        result.problems.append(f"the sessions of the round could not all be read as ended within {cap:g} s")
        return last

    async def _wait_drain(self, host: str, result: RoundResult, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            drains = await ask(self.lab, lambda c: c.drains(host))
            if drains and drains[0].state != DrainState.RUNNING:
                if drains[0].state != DrainState.DONE:
                    result.problems.append(f"the drain of {host} ended {drains[0].state}")
                return
            await asyncio.sleep(0.5)
        result.stuck += 1
        result.problems.append(f"the drain of {host} still runs after {timeout:g} s")

    async def _audit(self, sessions: list[Session], result: RoundResult) -> None:
        lab = self.lab
        residency = await asyncio.to_thread(lambda: lab.residency(*self.guests))
        for guest, where in residency.items():
            if not where.running_on:
                result.lost += 1
                result.problems.append(f"{guest} runs nowhere: {where.explain()}")
                continue
            if len(where.running_on) > 1:
                result.doubled += 1
                result.problems.append(f"{guest} runs twice: {where.explain()}")
                continue
            if len(where.active_on) > 1 or len(where.defined_on) > 1:
                result.leftover_domains += 1
                result.problems.append(f"{guest} left a domain behind: {where.explain()}")
            (host,) = where.running_on
            try:
                before = await asyncio.to_thread(lab.wait_for_tick, guest, host, 1, 30.0)
                await asyncio.to_thread(lab.wait_for_tick, guest, host, before + 1, 30.0)
                continuity = await asyncio.to_thread(lab.continuity, guest)
            except LabError as error:
                result.lost += 1
                result.problems.append(f"{guest} does not tick on {host}: {error}")
                continue
            if not continuity.ok or len(continuity.boot_ids) != 1:
                result.lost += 1
                result.problems.append(f"{guest} broke in the move: {continuity.explain()}")
        by_vm: dict[str, Session] = {}
        for s in sorted(sessions, key=lambda s: s.created_at):
            by_vm[s.vm] = s
        for vm, s in by_vm.items():
            if s.state.terminal and vm in residency and not agrees(s, residency[vm].running_on):
                result.disagree += 1
                result.problems.append(
                    f"session {s.id} ended {s.state}/{s.code or '-'} but {vm} runs on {list(residency[vm].running_on)}"
                )
        await self._audit_leftovers(sessions, result, residency)

    async def _audit_leftovers(self, sessions: list[Session], result: RoundResult, residency) -> None:
        """Claims, reservations and images left once everything had time to clean
        up (a source agent that was down at commit time cleans up when it is back)."""
        unsettled = {s.id for s in sessions if s.code == SessionCode.NOT_CONFIRMED}
        deadline = time.monotonic() + LEFTOVER_WAIT_SECONDS
        while True:
            try:
                claims, held = await leftovers(self.lab)
                claims = {k: v for k, v in claims.items() if v not in unsettled}
            except (OSError, TimeoutError, nats.errors.Error, FerryError) as error:
                claims, held = {"?": f"could not read: {error}"}, []
            result.images_left = self._images_left(residency)
            if (not claims and not held and not result.images_left) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        result.leftover_claims = len(claims)
        result.leftover_reservations = len(held)
        result.problems += [f"claim {k} still held by session {v}" for k, v in claims.items()]
        result.problems += [f"reservation still held on {h}" for h in held]

    def _images_left(self, residency) -> int:
        """Local-disk images on hosts where their guest does not run."""
        left = 0
        for host in self.lab.hosts:
            for path in host.images_dir.glob("*.qcow2"):
                guest = path.stem
                if guest in self.local_disk and residency.get(guest) and residency[guest].running_on != (host.name,):
                    left += 1
        return left

    def replace_broken(self, result: RoundResult) -> None:
        """A guest lost or broken in a round is made anew, so later rounds still count."""
        if result.lost == 0 and result.doubled == 0:
            return
        for guest in list(self.guests):
            where = self.lab.residency(guest)[guest]
            if len(where.running_on) == 1:
                continue
            self.lab.delete_guest(guest)
            self.lab.create_guest(
                guest, self.hosts[0], GUEST_MEMORY_MIB, GUEST_DIRTY_MB,
                "local" if guest in self.local_disk else "none", LOCAL_DISK_MIB,
            )
            self.lab.wait_for_tick(guest, self.hosts[0], 1)


# ----- the benchmark ---------------------------------------------------------------


def round_line(r: RoundResult) -> str:
    mark = "[green]ok[/]" if r.clean else "[red]PROBLEM[/]"
    return (
        f"{r.fault:>12} #{r.number + 1:<3} {r.workload:<10} killed {r.killed:<12} {r.sessions} sessions, "
        f"worst {r.worst_seconds:5.1f} s to terminal"
        + (f", takeover {r.takeover_seconds:.1f} s" if r.takeover_seconds is not None else "")
        + f", images left {r.images_left}  {mark}"
    )


def table(rows: Sequence[FaultTally]) -> Table:
    out = Table(title="chaos: kill -9 while guests move")
    columns = ("fault", "rounds", "sessions", "VMs lost", "VMs doubled", "sessions stuck", "disagree", "leftovers",
               "images left", "worst to terminal", "worst takeover")
    for column in columns:
        out.add_column(column, justify="left" if column == "fault" else "right")
    for r in rows:
        out.add_row(
            r.fault, str(r.rounds), str(r.sessions), str(r.lost), str(r.doubled), str(r.stuck), str(r.disagree),
            str(r.leftovers), str(r.images_left), f"{r.worst_seconds:.1f} s",
            f"{r.worst_takeover:.1f} s" if r.worst_takeover is not None else "-",
        )
    return out


def make_guests(lab: Lab, count: int) -> tuple[list[str], list[str]]:
    """`count` busy guests spread over the hosts; the first has a local disk."""
    guests, local = [], []
    for i in range(count):
        name = f"chaos-{i + 1}"
        host = lab.hosts[i % len(lab.hosts)].name
        disk = "local" if i == 0 else "none"
        lab.create_guest(name, host, GUEST_MEMORY_MIB, GUEST_DIRTY_MB, disk, LOCAL_DISK_MIB)
        lab.wait_for_tick(name, host, 1)
        guests.append(name)
        if disk == "local":
            local.append(name)
    return guests, local


async def run_rounds(chaos: Chaos, faults: Sequence[str], rounds: int, on_round: Callable[[RoundResult], None]) -> list[RoundResult]:
    results = []
    for fault in faults:
        for number in range(rounds):
            result = await chaos.round(fault, number)
            results.append(result)
            on_round(result)
            await asyncio.to_thread(chaos.replace_broken, result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds per fault (default 20)")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"which to kill, comma-separated (default {','.join(FAULTS)})")
    parser.add_argument("--guests", type=int, default=3, help="busy guests moving around (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, to run the same rounds again")
    parser.add_argument("--strict", action="store_true", help="exit 1 when anything was lost, doubled, stuck or left over")
    add_lab_arguments(parser)
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown or not faults:
        parser.error(f"unknown fault {', '.join(unknown) or '(none)'}; known: {', '.join(FAULTS)}")
    if args.rounds < 1 or args.guests < 1:
        parser.error("--rounds and --guests must be at least 1")
    args.dir = args.dir.absolute()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    results: list[RoundResult] = []
    started = datetime.now(UTC).isoformat(timespec="seconds")

    def document(status: str) -> dict[str, Any]:
        return {
            "benchmark": "chaos", "status": status, "started": started, "seed": seed, "rounds_per_fault": args.rounds,
            "faults": faults, "summary": [asdict(r) for r in tally(results)], "rounds": [asdict(r) for r in results],
        }

    def save(status: str) -> None:
        write_results(args.dir / "chaos.json", document(status))

    def body(lab: Lab) -> None:
        bring_up(lab, args.address_base)
        guests, local = make_guests(lab, args.guests)
        console.print(f"seed {seed}: {args.rounds} rounds per fault of {', '.join(faults)}, guests {', '.join(guests)}")
        chaos = Chaos(lab, guests, random.Random(seed), local_disk=local)

        def on_round(result: RoundResult) -> None:
            console.print(round_line(result))
            for problem in result.problems:
                console.print(f"      {problem}")

        results.extend(asyncio.run(run_rounds(chaos, faults, args.rounds, on_round)))
        console.print(table(tally(results)))
        save("done")
        console.print(f"results in {args.dir / 'chaos.json'}")

    status = run_in_lab(args, 3, body, save)
    if status == 0 and args.strict and not all(r.clean for r in results):
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())

