"""`make demo`: Ferry on a local lab of real libvirt hosts.

Starts the lab (libvirtd per host, three clustered nats-servers, one
ferry-agent per host, two ferry-coordinators), starts guests, and shows what an
operator sees: live moves, a cancel, a drain with the leading coordinator
killed in the middle, an evacuation set off by a failing health probe, a lost
host. Stops everything it started at the end unless --keep is given.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ferry.lab import processes
from ferry.lab.demo_drain import (
    drain_step,
    evacuation_step,
    remove_guests,
    remove_leftover_guests,
    remove_leftover_probes,
    undrain_leftovers,
)
from ferry.lab.demo_support import console, ferry, fresh_guest, step, wait_hosts
from ferry.lab.errors import LabError
from ferry.lab.lab import Lab, agent_role
from ferry.lab.nats_security import LAB_VIEWER
from ferry.lab.networks import LAB_NETWORK, defines_lab_network, network_hosts
from ferry.runtime.identity import Role
from ferry.runtime.logs import quiet_asyncio


def run(lab: Lab, keep: bool) -> None:
    step(
        f"Starting a lab of {len(lab.hosts)} libvirt hosts, three clustered nats-servers, agents "
        f"and two coordinators (a leader and a standby) in {lab.dir}"
    )
    remove_leftover_probes(lab)
    report = lab.up(ferry=True)
    for part in report.started:
        console.print(f"  started {part}")
    for part in report.already_running:
        console.print(f"  already running: {part}")
    if not report.ok:
        raise LabError("; ".join(f"{part}: {why}" for part, why in report.failed.items()))

    names = [h.name for h in lab.hosts]
    step("Starting guests (TCG, 256 MiB each; they print a counter on their serial console)")
    console.print(f"  network {LAB_NETWORK} is defined on {', '.join(h.name for h in network_hosts(lab.layout))} only")
    web, db, busy = "web.prod-1.example.com", "ubuntu22.04", "busy-1"
    guests = {web: names[0], db: names[1 % len(names)], busy: names[0]}
    remove_leftover_guests(lab)
    fresh_guest(lab, web, guests[web], memory_mib=256, networks=(LAB_NETWORK,))
    fresh_guest(lab, db, guests[db], memory_mib=256)
    fresh_guest(lab, busy, guests[busy], memory_mib=256, dirty_mb=64)

    def all_reported(hosts: dict) -> bool:
        if set(hosts) != set(names) or any(h["state"] != "up" for h in hosts.values()):
            return False
        return all(
            any(vm["name"] == g and vm["state"] == "running" for vm in hosts[h]["vms"]) for g, h in guests.items()
        )

    step("What the coordinator knows, from the agents' heartbeats (VM names are any names libvirt takes)")
    wait_hosts(lab, all_reported, "every host up with its guests")
    undrain_leftovers(lab)
    ferry(lab, "hosts")

    step(f"Moving {web} live: Ferry picks a destination that has network {LAB_NETWORK}; TLS on")
    ferry(lab, "migrate", web, "--dry-run")
    ferry(lab, "migrate", web, "--wait")
    report = lab.continuity(web)
    if not report.ok:
        raise LabError(f"{web} did not keep running across the move: {report.explain()}")
    where = lab.residency(web)[web]
    console.print(f"  {web} never stopped ({report.explain()}); {where.explain()}")

    without = next((h.name for h in lab.hosts if not defines_lab_network(h)), None)
    if without is not None:
        step(f"Asking for {without}, which lacks network {LAB_NETWORK}: it declines, the VM stays where it is")
        out = ferry(lab, "migrate", web, "--to", without, "--wait", check=False)
        if "network_missing" not in out:
            raise LabError(f"{without} did not decline {web} for its missing network")
        console.print(f"  {lab.residency(web)[web].explain()}")

    step("Moving it back, limited to 32 MiB/s, and a cancel of a second move")
    ferry(lab, "migrate", web, "--to", names[0], "--bandwidth", "32", "--wait")
    session = json.loads(ferry(lab, "migrate", db, "--bandwidth", "2", "--json", show=False))
    time.sleep(3)
    ferry(lab, "cancel", session["id"], "--wait")
    ferry(lab, "sessions")

    step("Every daemon and person has its own identity: a viewer may look but not move, and no VM moves in clear")
    other = next(h.name for h in lab.hosts if defines_lab_network(h) and h.name != names[0])
    ferry(lab, "sessions", "--vm", web, who=(LAB_VIEWER, Role.VIEWER))
    refused = ferry(lab, "migrate", web, "--to", other, who=(LAB_VIEWER, Role.VIEWER), check=False)
    if "forbidden" not in refused:
        raise LabError(f"the viewer was not refused: {refused.strip()}")
    plain = ferry(lab, "migrate", web, "--to", other, "--no-tls", "--wait", check=False)
    if "tls_required" not in plain:
        raise LabError(f"a migration without TLS was not refused: {plain.strip()}")
    console.print(f"  {lab.residency(web)[web].explain()}")

    step(f"{busy} rewrites 64 MiB/s, twice what a 32 MiB/s link copies: the default policy makes it converge")
    ferry(lab, "migrate", busy, "--dry-run", "--bandwidth", "32")
    ferry(lab, "migrate", busy, "--bandwidth", "32", "--wait", timeout=300)
    # Sessions of earlier demos stay in the store: this one is the newest.
    moved = max(json.loads(ferry(lab, "sessions", "--vm", busy, "--json", show=False)), key=lambda s: s["created_at"])
    ferry(lab, "session", moved["id"])
    report = lab.continuity(busy)
    if not report.ok:
        raise LabError(f"{busy} did not keep running across the move: {report.explain()}")
    console.print(f"  {busy} never stopped ({report.explain()}); {lab.residency(busy)[busy].explain()}")
    remove_guests(lab, [busy], "the convergence step is over")

    drain_step(lab, names[0])
    evacuation_step(lab, names[1 % len(names)])

    victim = names[-1]
    step(f"Stopping the agent on {victim}: the coordinator marks the host lost within 3 heartbeats")
    processes.stop(lab.process(agent_role(lab.host(victim))))
    started = time.monotonic()
    wait_hosts(lab, lambda h: h[victim]["state"] == "lost", f"{victim} to be lost")
    console.print(f"  {victim} lost after {time.monotonic() - started:.1f} s")
    ferry(lab, "hosts")

    step(f"Restarting the agent on {victim}: the host comes back")
    lab.start_ferry()
    wait_hosts(lab, lambda h: h[victim]["state"] == "up", f"{victim} to come back")
    ferry(lab, "hosts")

    if keep:
        step("The lab keeps running")
        console.print("  export " + " ".join(f"{k}={v}" for k, v in lab.cli_env().items()) + "; ferry hosts", markup=False)
        console.print(f"  ferry-lab --dir {lab.dir} status    ferry-lab --dir {lab.dir} down")


def main(argv: list[str] | None = None) -> int:
    quiet_asyncio()  # the demo talks TLS to the lab's nats-servers
    parser = argparse.ArgumentParser(prog="ferry-demo", description=__doc__)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("FERRY_DEMO_DIR", "/var/tmp/ferry-demo")))
    # Its own address range, so the demo never collides with a lab started by hand or by tests.
    parser.add_argument("--address-base", default="127.0.30")
    parser.add_argument("--keep", action="store_true", help="leave the lab running at the end")
    args = parser.parse_args(argv)
    lab = None
    try:
        lab = Lab.create(args.dir, args.hosts, args.address_base)
        run(lab, args.keep)
    except LabError as error:
        console.print(f"[red]demo failed:[/] {error}", markup=True, highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if lab is not None and not args.keep:
            step("Stopping everything the demo started")
            try:
                for line in lab.down():
                    console.print(f"  {line}")
            except LabError as error:
                console.print(f"[red]could not stop the lab:[/] {error}")
    step("Done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
