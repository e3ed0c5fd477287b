"""`make demo`: Ferry on a local lab of real libvirt hosts.

Starts the lab (libvirtd per host, nats-server, one ferry-agent per host, a
ferry-coordinator), starts guests, and shows what an operator sees: live
moves, a cancel, a drain, an evacuation set off by a failing health probe, a
lost host. Stops everything it started at the end unless --keep is given.
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
    remove_leftover_guests,
    remove_leftover_probes,
    undrain_leftovers,
)
from ferry.lab.demo_support import console, ferry, fresh_guest, step, wait_hosts
from ferry.lab.errors import LabError
from ferry.lab.lab import Lab, agent_role


def run(lab: Lab, keep: bool) -> None:
    step(f"Starting a lab of {len(lab.hosts)} libvirt hosts, nats-server, agents and a coordinator in {lab.dir}")
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
    guests = {"web-1": names[0], "db-1": names[1 % len(names)]}
    remove_leftover_guests(lab)
    for guest, host in guests.items():
        fresh_guest(lab, guest, host, memory_mib=256)

    def all_reported(hosts: dict) -> bool:
        if set(hosts) != set(names) or any(h["state"] != "up" for h in hosts.values()):
            return False
        return all(
            any(vm["name"] == g and vm["state"] == "running" for vm in hosts[h]["vms"]) for g, h in guests.items()
        )

    step("What the coordinator knows, from the agents' heartbeats")
    wait_hosts(lab, all_reported, "every host up with its guests")
    undrain_leftovers(lab)
    ferry(lab, "hosts")

    step("Moving web-1 live: Ferry picks the destination, TLS on, progress while it runs")
    ferry(lab, "migrate", "web-1", "--wait")
    report = lab.continuity("web-1")
    if not report.ok:
        raise LabError(f"web-1 did not keep running across the move: {report.explain()}")
    where = lab.residency("web-1")["web-1"]
    console.print(f"  web-1 never stopped ({report.explain()}); {where.explain()}")

    step("Moving it back, limited to 32 MiB/s, and a cancel of a second move")
    ferry(lab, "migrate", "web-1", "--to", names[0], "--bandwidth", "32", "--wait")
    session = json.loads(ferry(lab, "migrate", "db-1", "--bandwidth", "2", "--json", show=False))
    time.sleep(3)
    ferry(lab, "cancel", session["id"], "--wait")
    ferry(lab, "sessions")

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
        console.print(f"  export FERRY_NATS_URL={lab.nats_url}; ferry hosts")
        console.print(f"  ferry-lab --dir {lab.dir} status    ferry-lab --dir {lab.dir} down")


def main(argv: list[str] | None = None) -> int:
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
