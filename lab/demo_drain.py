"""The demo's drain and evacuation steps, and the clean-up of what an interrupted demo left."""

import asyncio
import json
import re
import time
from pathlib import Path

import msgspec
import nats

from ferry.agent.probes import install_probe
from ferry.coordinator.session_history import max_overlap
from ferry.lab.demo_support import console, ferry, fresh_guest, step, wait_hosts
from ferry.lab.errors import LabError
from ferry.lab.lab import Lab, coordinator_role
from ferry.lab.nats_security import LAB_TOOLS
from ferry.proto import subjects
from ferry.proto.codec import Decoder
from ferry.proto.drain import Drain, ItemState
from ferry.proto.errors import FerryError
from ferry.proto.events import (
    CoordinatorEvent,
    DrainFinished,
    DrainGaveUp,
    DrainRetry,
    DrainStarted,
    EvacuationCalledOff,
    EvacuationPending,
    HealthChanged,
    HostEvent,
    PlacementsResumed,
    PlacementsStopped,
    SessionChanged,
    SessionWaiting,
    VmPlaced,
)
from ferry.proto.host import HealthState
from ferry.proto.session import Session, SessionState
from ferry.runtime.connection import identity_options
from ferry.runtime.identity import Role

# Name stems of the small guests the drain and evacuation steps start (cache-1, ...).
DRAIN_GUESTS = "cache"
EVACUATION_GUESTS = "batch"




def fill_host(lab: Lab, host: str, count: int, prefix: str) -> tuple[list[str], list[str]]:
    """Make sure `count` guests run on `host`, starting small new ones as needed.

    Returns (every guest on the host, the ones started here); waits until the
    coordinator reports all of them there, so a drain plan sees them.
    """
    there = [g.name for g in lab.guests() if g.host == host and g.state == "running"]
    for guest in there:
        console.print(f"  {guest} already runs on {host}")
    made = [f"{prefix}-{n}" for n in range(1, count - len(there) + 1)]
    for guest in made:
        fresh_guest(lab, guest, host, memory_mib=128)
    everyone = there + made

    def reported(hosts: dict) -> bool:
        running = {vm["name"] for vm in hosts[host]["vms"] if vm["state"] == "running"}
        return set(everyone) <= running

    wait_hosts(lab, reported, f"the coordinator to see {', '.join(everyone)} on {host}")
    return everyone, made


def undrain_quietly(lab: Lab, host: str) -> None:
    """After a failed step: leave the host accepting VMs if Ferry still answers."""
    try:
        ferry(lab, "undrain", host, show=False)
    except LabError:
        pass  # not draining, or Ferry is gone; the next demo clears it anyway


def remove_guests(lab: Lab, guests: list[str], why: str = "started for this step") -> None:
    for guest in guests:
        lab.delete_guest(guest)
    if guests:
        console.print(f"  removed {', '.join(guests)} ({why})")


def check_moved(lab: Lab, guest: str, away_from: str) -> str:
    """The guest runs exactly once, not on `away_from`, still ticks there, and never restarted."""
    where = lab.residency(guest)[guest]
    host = where.single_host
    if host is None or host == away_from or where.defined_on != (host,):
        raise LabError(f"{guest} is not where it should be: {where.explain()}")
    before = lab.wait_for_tick(guest, host, 1)
    lab.wait_for_tick(guest, host, before + 1)
    report = lab.continuity(guest)
    if not report.ok:
        raise LabError(f"{guest} did not keep running across its moves: {report.explain()}")
    return f"{guest} runs only on {host}: {report.explain()}"


def since(start: float, at: float) -> str:
    return f"{f'+{at - start:.1f} s':>7}"


def admitted_at(session: Session) -> float | None:
    """When the session first got an admission slot (its first `preparing`)."""
    return next((t.at for t in session.history if t.state == SessionState.PREPARING), None)


def drain_step(lab: Lab, host: str) -> None:
    limits = json.loads(ferry(lab, "limits", "--json", show=False))["limits"]
    outbound = limits["outbound_per_host"]
    step(f"Draining {host} for maintenance: every VM moves away, at most {outbound} at a time out of one host")
    ferry(lab, "limits")
    guests, made = fill_host(lab, host, 3, DRAIN_GUESTS)
    try:
        ferry(lab, "drain", host, "--dry-run")
        ferry(lab, "drain", host)
        kill_the_leader_mid_drain(lab, host)
        ferry(lab, "drain", host, "--wait", timeout=300)

        (drain,) = msgspec.json.decode(ferry(lab, "drains", host, "--json", show=False), type=list[Drain])
        not_moved = [f"{i.vm}: {i.state} {i.reason}" for i in drain.items if i.state != ItemState.MOVED]
        if not_moved or not set(guests) <= {i.vm for i in drain.items}:
            raise LabError(f"the drain of {host} did not move every guest: {'; '.join(not_moved) or 'some are missing'}")
        all_sessions = msgspec.json.decode(ferry(lab, "sessions", "--json", show=False), type=list[Session])
        # Sessions of earlier demos' drains stay in the store: only this drain's.
        sessions = [s for s in all_sessions if s.drain_host == host and s.created_at >= drain.started_at - 1.0]
        if not {i.session_id for i in drain.items} <= {s.id for s in sessions}:
            raise LabError(f"`ferry sessions` does not list every session of the drain of {host}")
        console.print("  the drain's sessions, from its start:")
        width = max(len(s.vm) for s in sessions)
        for s in sorted(sessions, key=lambda s: (admitted_at(s) or 0.0, s.vm)):
            admitted = admitted_at(s) or s.created_at
            waited = f"  (waited {admitted - s.created_at:.1f} s for a slot)" if admitted - s.created_at >= 0.5 else ""
            console.print(
                f"    {s.vm:<{width}}  {s.source} -> {s.dest}  admitted {since(drain.started_at, admitted)}  "
                f"{s.state} {since(drain.started_at, s.history[-1].at)}{waited}",
                highlight=False,
            )
        peak = max_overlap(sessions, key=lambda s: s.source).get(host, 0)
        if peak > outbound:
            raise LabError(f"{peak} migrations left {host} at once, over the limit of {outbound}")
        console.print(f"  at most {peak} migrations left {host} at once (limit {outbound})")
        for guest in guests:
            console.print(f"  {check_moved(lab, guest, host)}", highlight=False)
        ferry(lab, "hosts")
        ferry(lab, "undrain", host)
    except BaseException:
        undrain_quietly(lab, host)
        raise
    remove_guests(lab, made)


def kill_the_leader_mid_drain(lab: Lab, host: str) -> None:
    """While the drain's first VM moves, kill -9 the leading coordinator: the
    standby takes the lease, adopts the sessions and finishes the drain."""
    step(f"While {host} drains: kill -9 the leading coordinator; the standby takes over and finishes the drain")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sessions = msgspec.json.decode(ferry(lab, "sessions", "--running", "--json", show=False), type=list[Session])
        if any(s.drain_host == host and s.state == SessionState.MIGRATING for s in sessions):
            break
        time.sleep(0.2)
    ferry(lab, "status")
    leader = json.loads(ferry(lab, "status", "--json", show=False))["leader"]["holder"]
    console.print(f"[dim]$ kill -9 <pid of ferry-coordinator {leader}>[/]")
    lab.kill(coordinator_role(leader))
    killed_at = time.monotonic()
    while True:
        status = json.loads(ferry(lab, "status", "--json", show=False, check=False).split("\nferry:")[0] or "{}")
        holder = (status.get("leader") or {}).get("holder")
        if holder and holder != leader:
            break
        if time.monotonic() - killed_at > 30:
            raise LabError(f"no coordinator took over from {leader} within 30 s; logs are in {lab.dir}")
        time.sleep(0.2)
    console.print(f"  {holder} leads {time.monotonic() - killed_at:.1f} s after {leader} was killed")
    ferry(lab, "status")
    lab.start(coordinator_role(leader))
    console.print(f"  {leader} started again: it stands by")


PROBE = "raid"
EVACUATION_TIMEOUT = 120.0  # seconds: the 10 s debounce, then the moves


def describe(event: object) -> str:
    """One line for people about a coordinator or host event."""
    match event:
        case HealthChanged():
            bad = "; ".join(f"{c.name}: {c.message}" for c in event.checks if c.state != HealthState.OK)
            return f"{event.host}: health {event.previous} -> {event.current}{f' ({bad})' if bad else ''}"
        case EvacuationPending():
            return f"{event.host}: evacuation in {event.due_at - event.at:.0f} s unless it recovers ({event.reason})"
        case EvacuationCalledOff():
            return f"{event.host}: evacuation called off ({event.reason})"
        case PlacementsStopped():
            return f"{event.host}: no new VMs are placed here ({event.reason})"
        case PlacementsResumed():
            return f"{event.host}: new VMs may be placed here again ({event.reason})"
        case DrainStarted():
            who = "automatic" if event.automatic else "by an operator"
            return f"{event.host}: drain started ({who}), {event.vms} VMs to move: {event.reason}"
        case VmPlaced():
            return f"{event.vm}: sent to {event.dest or '?'}, session {event.session_id} (attempt {event.attempt})"
        case SessionChanged():
            why = f" ({event.code}: {event.reason})" if event.code else ""
            return f"{event.vm}: {event.state} {event.source} -> {event.dest or '?'}{why}"
        case SessionWaiting():
            return f"{event.vm}: waiting: {event.reason}"
        case DrainRetry():
            return f"{event.vm}: attempt {event.attempt} failed on {event.failed_on or '?'}, retrying: {event.reason}"
        case DrainGaveUp():
            return f"{event.vm}: given up after {event.attempts} attempts: {event.reason}"
        case DrainFinished():
            return f"{event.host}: drain finished: {event.moved} moved, {event.gave_up} given up, {event.gone} gone"
        case _:
            return f"{type(event).__struct_config__.tag}: {msgspec.json.encode(event).decode()}"  # type: ignore[attr-defined]


async def watch_evacuation(lab: Lab, host: str, guests: list[str], probe: Path) -> tuple[float, float, float]:
    """Installs the failing probe, prints the events as they arrive until every
    guest runs elsewhere and the drain is finished.

    Returns when (wall clock) the host turned critical, when its automatic drain
    started and when every guest ran elsewhere.
    """
    coordinator_events = Decoder(CoordinatorEvent, "coordinator event")  # type: ignore[arg-type]
    host_events = Decoder(HostEvent, "host event")  # type: ignore[arg-type]
    inbox: asyncio.Queue = asyncio.Queue()

    async def on_message(msg) -> None:
        inbox.put_nowait(msg)

    try:
        nc = await nats.connect(servers=lab.nats_urls, **identity_options(lab.nats_settings(LAB_TOOLS, Role.COORDINATOR)))
    except (OSError, nats.errors.Error) as error:
        raise LabError(f"the demo could not connect to {lab.nats_servers} to follow events: {error}") from None
    try:
        await nc.subscribe(subjects.COORDINATOR_EVENTS, cb=on_message)
        await nc.subscribe(subjects.host_event(host), cb=on_message)
        await nc.flush()
        install_probe(probe.parent, probe.name, 'echo "CRITICAL - md0 degraded, 1 of 2 disks failed"; exit 2')
        t0, started = time.time(), time.monotonic()
        console.print(f"  {since(t0, t0)}  probe {probe.name} installed on {host}")
        critical_at = drain_at = moved_at = None
        finished = False
        next_look = started
        while moved_at is None or not finished:
            if time.monotonic() - started > EVACUATION_TIMEOUT:
                raise LabError(f"{host} was not evacuated within {EVACUATION_TIMEOUT:.0f} s; logs are in {lab.dir}")
            try:
                msg = await asyncio.wait_for(inbox.get(), 0.5)
            except TimeoutError:
                msg = None
            if msg is not None:
                try:
                    decoder = coordinator_events if msg.subject == subjects.COORDINATOR_EVENTS else host_events
                    event = decoder.decode(msg.data)
                except FerryError as error:
                    console.print(f"  (an event the demo cannot read: {error})")
                    continue
                console.print(f"  {since(t0, event.at or time.time())}  {describe(event)}", highlight=False)
                if isinstance(event, EvacuationPending) and event.host == host and critical_at is None:
                    critical_at = event.at
                elif isinstance(event, DrainStarted) and event.host == host:
                    if not event.automatic:
                        raise LabError(f"the drain of {host} was not started by the coordinator's health watch")
                    drain_at = event.at
                elif isinstance(event, DrainFinished) and event.host == host:
                    if event.gave_up:
                        raise LabError(f"the evacuation of {host} gave up on {event.gave_up} VMs")
                    finished = True
            if moved_at is None and time.monotonic() >= next_look:
                next_look = time.monotonic() + 0.5
                residency = await asyncio.to_thread(lab.residency, *guests)
                if all(r.single_host not in (None, host) for r in residency.values()):
                    moved_at = time.time()
                    console.print(f"  {since(t0, moved_at)}  every guest runs elsewhere (libvirt says)")
        if critical_at is None or drain_at is None:
            raise LabError(f"{host} was emptied, but the coordinator announced no evacuation_pending or drain_started")
        return critical_at, drain_at, moved_at
    finally:
        await nc.close()


def evacuation_step(lab: Lab, host: str) -> None:
    step(f"A health probe on {host} reports a degraded RAID: the coordinator evacuates the host by itself")
    guests, made = fill_host(lab, host, 2, EVACUATION_GUESTS)
    probe = lab.host(host).probes_dir / PROBE
    try:
        critical_at, drain_at, moved_at = asyncio.run(watch_evacuation(lab, host, guests, probe))
        console.print(
            f"  {host} emptied {moved_at - critical_at:.1f} s after it turned critical: {drain_at - critical_at:.1f} s "
            f"of debounce, then {moved_at - drain_at:.1f} s to move {len(guests)} VMs",
            highlight=False,
        )
        for guest in guests:
            console.print(f"  {check_moved(lab, guest, host)}", highlight=False)

        step(f"The disk is replaced: the probe is removed; {host} turns healthy but stays draining")
        probe.unlink()
        started = time.monotonic()
        hosts = wait_hosts(lab, lambda h: h[host]["health"] == "ok", f"{host} to be healthy again")
        console.print(f"  {host} healthy again after {time.monotonic() - started:.1f} s")
        if not hosts[host]["draining"]:
            raise LabError(f"{host} recovered and stopped draining by itself; only `ferry undrain` should do that")
        ferry(lab, "hosts")
        ferry(lab, "drains")
        ferry(lab, "undrain", host)
    except BaseException:
        probe.unlink(missing_ok=True)
        undrain_quietly(lab, host)
        raise
    remove_guests(lab, made)


def remove_leftover_probes(lab: Lab) -> None:
    """An interrupted earlier demo may have left its failing probe: a host would turn critical at once."""
    for host in lab.hosts:
        if (host.probes_dir / PROBE).exists():
            (host.probes_dir / PROBE).unlink()
            console.print(f"  removed the probe {PROBE} an earlier demo left on {host.name}")


def remove_leftover_guests(lab: Lab) -> None:
    """Guests an interrupted earlier demo started for its drain and evacuation steps."""
    ours = re.compile(rf"({DRAIN_GUESTS}|{EVACUATION_GUESTS})-\d+")
    leftovers = sorted({g.name for g in lab.guests() if ours.fullmatch(g.name)})
    remove_guests(lab, leftovers, "left by an earlier demo")


def undrain_leftovers(lab: Lab) -> None:
    """Drain marks live in JetStream KV: an interrupted earlier demo may have left one."""
    for drain in msgspec.json.decode(ferry(lab, "drains", "--json", show=False), type=list[Drain]):
        ferry(lab, "undrain", drain.host, show=False)
        console.print(f"  {drain.host} was draining since an earlier demo: undrained")

