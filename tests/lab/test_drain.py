"""Draining and health-triggered evacuation with real guests: the real CLI,
coordinator and agents, real libvirtd + QEMU in the lab, a real nats-server.
Every guest must end running in exactly one place, never restarted."""

from __future__ import annotations

import time

import nats
import pytest

from ferry.agent.probes import install_probe
from ferry.cli.client import FerryClient
from ferry.coordinator.session_history import max_overlap
from ferry.lab.lab import Lab
from ferry.lab.nats_security import LAB_TOOLS
from ferry.proto import subjects
from ferry.proto.codec import Decoder
from ferry.proto.drain import DrainState, ItemState
from ferry.proto.errors import FerryError
from ferry.proto.events import CoordinatorEvent, DrainStarted, EvacuationPending, VmPlaced
from ferry.proto.host import HealthState
from ferry.proto.session import SessionOrigin, SessionState
from ferry.runtime.connection import identity_options
from ferry.runtime.identity import Role
from tests.support.ferry_cli import ferry
from tests.support.guests import assert_moved_intact, client_for
from tests.support.waiting import eventually

pytestmark = pytest.mark.lab

# The coordinator's defaults, which the lab does not change.
OUTBOUND_LIMIT = 2
DEBOUNCE_SECONDS = 10.0






async def host_view(client: FerryClient, name: str):
    return next(h for h in (await client.hosts()).hosts if h.host == name)


async def undrain_when_healthy(client: FerryClient, host: str) -> None:
    """Leave the shared lab as found: the host healthy and accepting VMs."""

    async def healthy():
        return (await host_view(client, host)).health == HealthState.OK

    await eventually(healthy, timeout=30, what=f"{host} healthy")
    try:
        await client.undrain(host)
    except FerryError:
        pass  # not draining: nothing to undo


async def test_drain_wait_moves_three_guests_within_the_outbound_limit(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guests = [guest_factory(host="hv1", memory_mib=128, dirty_mb=8, wait_ticks=2) for _ in range(3)]
    client = await client_for(lab)
    try:
        result = ferry(lab, "drain", "hv1", "--wait")
        assert result.code == 0, result.stdout + result.stderr
        assert "drain of hv1 done" in result.stdout

        (drain,) = await client.drains("hv1")
        assert drain.state == DrainState.DONE
        items = {i.vm: i for i in drain.items}
        assert set(guests) <= set(items)
        assert all(items[g].state == ItemState.MOVED and items[g].dest in ("hv2", "hv3") for g in guests)

        sessions = [s for s in await client.sessions() if s.vm in guests and s.drain_host == "hv1"]
        assert len(sessions) == 3 and all(s.state == SessionState.COMPLETED for s in sessions)
        assert all(s.origin == SessionOrigin.DRAIN for s in sessions)
        # Three started at once, two at a time left hv1: the third waited its turn.
        assert max_overlap(sessions, key=lambda s: s.source) == {"hv1": OUTBOUND_LIMIT}
        assert all(s.source == "hv1" for s in sessions)

        for guest in guests:
            assert_moved_intact(lab, guest, items[guest].dest)
        residency = lab.residency(*guests)
        assert not any("hv1" in r.defined_on for r in residency.values()), "hv1 ends empty"
        view = await host_view(client, "hv1")
        assert view.draining and view.drain_reason == "operator"
    finally:
        await undrain_when_healthy(client, "hv1")
        await client.close()


async def test_a_critical_probe_evacuates_the_host_without_any_command(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guests = [guest_factory(host="hv1", memory_mib=128, dirty_mb=4, wait_ticks=2) for _ in range(2)]
    events: list = []
    decoder = Decoder(CoordinatorEvent, "event")  # type: ignore[arg-type]
    nc = await nats.connect(servers=lab.nats_urls, **identity_options(lab.nats_settings(LAB_TOOLS, Role.COORDINATOR)))

    async def on_event(msg) -> None:
        events.append(decoder.decode(msg.data))

    await nc.subscribe(subjects.COORDINATOR_EVENTS, cb=on_event)
    client = await client_for(lab)
    probe = install_probe(lab.host("hv1").probes_dir, "raid", 'echo "CRITICAL - md0 degraded, 1 of 2 disks failed"; exit 2')
    started = time.monotonic()
    try:

        async def moved():
            residency = lab.residency(*guests)
            return all(len(r.running_on) == 1 and r.running_on[0] != "hv1" for r in residency.values())

        await eventually(moved, timeout=DEBOUNCE_SECONDS + 90, every=0.5, what="hv1's guests evacuated")
        took = time.monotonic() - started

        pending = next(e for e in events if isinstance(e, EvacuationPending) and e.host == "hv1")
        assert "probe:raid: CRITICAL - md0 degraded" in pending.reason
        drain_started = next(e for e in events if isinstance(e, DrainStarted) and e.host == "hv1")
        assert drain_started.automatic
        assert drain_started.reason.startswith(f"health critical for {DEBOUNCE_SECONDS:g} s: probe:raid: CRITICAL")
        # The debounce held: the drain began only after the host stayed critical that long.
        assert drain_started.at - pending.at >= DEBOUNCE_SECONDS - 0.5
        placed = {e.vm for e in events if isinstance(e, VmPlaced) and e.host == "hv1"}
        assert set(guests) <= placed

        async def completed():
            # The guests run elsewhere a moment before their sessions are committed.
            found = [s for s in await client.sessions() if s.vm in guests]
            return found if len(found) == len(guests) and all(s.state.terminal for s in found) else None

        sessions = await eventually(completed, timeout=30, what="the evacuation's sessions ended")
        assert all(s.origin == SessionOrigin.EVACUATION and s.state == SessionState.COMPLETED for s in sessions)
        for s in sessions:
            assert_moved_intact(lab, s.vm, s.dest)
        view = await host_view(client, "hv1")
        assert view.draining and view.health == HealthState.CRITICAL
        print(f"evacuated {len(guests)} guests {took:.1f} s after the probe turned critical")

        # Recovery does not undrain: an operator decides.
        probe.unlink()

        async def healthy():
            return (await host_view(client, "hv1")).health == HealthState.OK

        await eventually(healthy, timeout=30, what="hv1 healthy again")
        assert (await host_view(client, "hv1")).draining
    finally:
        probe.unlink(missing_ok=True)
        await undrain_when_healthy(client, "hv1")
        await client.close()
        await nc.close()

