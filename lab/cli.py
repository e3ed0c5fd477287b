"""ferry-lab: start, inspect and stop the local lab; create and check guests.

Exit codes: 0 done; 1 failed (a sentence says why); 2 bad arguments;
3 `up` started the lab's core (nats-servers, libvirtds) but some other part
(ferry daemons, guest image) could not start; 4 `host power`: the host is off.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import libvirt

from ferry.lab import ferry_services
from ferry.lab.errors import LabError
from ferry.lab.guests import DISK_KINDS
from ferry.lab.lab import JETSTREAM_PART, NATS_ROLES, Lab, libvirtd_role, sweep_namespaces
from ferry.lab.layout import (
    COORDINATORS,
    DEFAULT_ADDRESS_BASE,
    DEFAULT_CACHE_DIR,
    DEFAULT_DIR,
    DEFAULT_HOSTS,
    NATS_SERVERS,
    STATE_FILE_NAME,
)
from ferry.lab.prereqs import check_root
from ferry.runtime.logs import quiet_asyncio
from ferry.runtime.version import VERSION

EXIT_FAILED = 1
EXIT_PARTIAL = 3
# `host power` of a host that is off (fence_lab says the same with 2, as fence agents do).
EXIT_POWERED_OFF = 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry-lab", description="A local multi-host libvirt lab for Ferry.")
    parser.add_argument("--version", action="version", version=f"ferry {VERSION}")
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("FERRY_LAB_DIR", DEFAULT_DIR)),
        help=f"the lab's folder (default: $FERRY_LAB_DIR or {DEFAULT_DIR})",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the lab (again: starts what is not running)")
    up.add_argument("--hosts", type=int, help=f"number of hypervisor hosts (default: as recorded in DIR, else {DEFAULT_HOSTS})")
    up.add_argument(
        "--address-base",
        help=f"host N listens on BASE.N (default: as recorded in DIR, else {DEFAULT_ADDRESS_BASE})",
    )
    up.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help=f"guest image cache (default {DEFAULT_CACHE_DIR})")
    up.add_argument("--no-ferry", action="store_true", help="start libvirt and NATS only, no ferry-agent/ferry-coordinator")

    commands.add_parser("status", help="show what runs")
    commands.add_parser("down", help="stop everything the lab started")

    guest = commands.add_parser("guest", help="guests of the lab").add_subparsers(dest="guest_command", required=True)
    create = guest.add_parser("create", help="define and start a guest")
    create.add_argument("name")
    create.add_argument("--host", default="hv1")
    create.add_argument("--memory", type=int, default=256, help="MiB (default 256)")
    create.add_argument("--dirty-mb", type=int, default=0, help="MiB of guest memory to rewrite per second")
    create.add_argument("--fill-mb", type=int, default=0, help="MiB of guest memory written once at boot")
    create.add_argument("--disk", choices=DISK_KINDS, default="none")
    create.add_argument("--disk-size", type=int, default=64, help="MiB (default 64)")
    create.add_argument(
        "--network", action="append", default=[], metavar="NAME",
        help="an interface on this libvirt network (repeatable; the lab defines `prod` on hv1, hv3, ...)",
    )
    delete = guest.add_parser("delete", help="destroy and undefine a guest, remove its disks and logs")
    delete.add_argument("name")
    guest.add_parser("list", help="guests on every host")
    check = guest.add_parser("check", help="did the guest keep running, and where does it run?")
    check.add_argument("name")

    host = commands.add_parser("host", help="power a lab host off or on, as a power cut would").add_subparsers(
        dest="host_command", required=True
    )
    for action, text in (
        ("poweroff", "cut the host's power: its agent, libvirtd, QEMU processes and virtlockd die at once, nothing cleans up"),
        ("poweron", "power the host back: its virtlockd, libvirtd and agent start; its guests stay off"),
        ("power", "say whether anything of the host runs (exit 0 on, 4 off)"),
    ):
        host.add_parser(action, help=text).add_argument("name", metavar="HOST")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_asyncio()  # the lab talks TLS to its nats-servers
    try:
        return _run(args)
    except LabError as error:
        print(f"ferry-lab: {error}", file=sys.stderr)
        return EXIT_FAILED
    except libvirt.libvirtError as error:
        print(f"ferry-lab: libvirt refused: {error.get_error_message()}.", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        print(f"ferry-lab: a file or process operation failed{where}: {error.strerror or error}.", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`ferry-lab status | head`); nothing left to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("ferry-lab: interrupted; `ferry-lab down` stops whatever was started.", file=sys.stderr)
        return EXIT_FAILED


def _run(args: argparse.Namespace) -> int:
    if args.command == "up":
        return _up(args)
    if args.command == "down":
        return _down(args.dir)
    if args.command == "status":
        return _status(Lab.attach(args.dir))
    if args.command == "host":
        return _host(args, Lab.attach(args.dir))
    return _guest(args, Lab.attach(args.dir))


def _up(args: argparse.Namespace) -> int:
    check_root()
    lab = Lab.create(args.dir, args.hosts, args.address_base, args.cache_dir)
    report = lab.up(ferry=not args.no_ferry)
    for part in report.already_running:
        print(f"already running: {part}")
    for part in report.started:
        print(f"started: {part}")
    for part, sentence in report.failed.items():
        print(f"FAILED {part}: {sentence}", file=sys.stderr)
    if report.ok:
        ferry = "" if args.no_ferry else f", coordinators {' and '.join(COORDINATORS)}"
        print(f"lab up in {lab.dir}: {len(lab.hosts)} hosts, NATS at {', '.join(lab.nats_urls)}{ferry}")
        print("  export " + " ".join(f"{key}={value}" for key, value in lab.cli_env().items()))
        return 0
    core = [*NATS_ROLES, JETSTREAM_PART, *(libvirtd_role(h) for h in lab.hosts)]
    if any(part in report.failed for part in core):
        print(f"ferry-lab: the lab did not start; `ferry-lab --dir {lab.dir} down` stops what did.", file=sys.stderr)
        return EXIT_FAILED
    print(f"ferry-lab: the lab's core runs in {lab.dir}, but parts above failed.", file=sys.stderr)
    return EXIT_PARTIAL


def _down(dir: Path) -> int:
    check_root()
    if not (dir / STATE_FILE_NAME).exists():
        # Nothing recorded; still make sure nothing lingers in a lab namespace there.
        killed = sweep_namespaces(dir.absolute())
        print(f"no lab in {dir}" + (f"; killed leftover processes {killed}" if killed else "; nothing to stop"))
        return 0
    lab = Lab.attach(dir)
    for line in lab.down():
        print(line)
    print(f"lab in {lab.dir} is down")
    return 0


def _status(lab: Lab) -> int:
    status = lab.status()
    nats = f"at {', '.join(status.nats_urls)}" if status.nats_urls else "not running"
    print(f"lab in {status.dir}: {len(lab.hosts)} hosts, NATS {nats}")
    for host in lab.hosts:
        print(f"  {host.name}  {host.address}  {host.uri}")
    if status.nats_urls:
        for name, url in zip(NATS_SERVERS, lab.nats_urls, strict=True):
            print(f"  {name}  {url}")
    metrics = ferry_services.metrics_urls(lab.layout)
    for part in status.parts:
        line = f"  {'running' if part.running else 'stopped':8} {part.role}" + (f" (pid {part.pid})" if part.pid else "")
        print(line + (f"  metrics {metrics[part.role]}" if part.role in metrics else ""))
    for guest in status.guests:
        print(f"  guest {guest.name} on {guest.host}: {guest.state}")
    for problem in status.problems:
        print(f"  problem: {problem}")
    return 0 if all(p.running for p in status.parts) else EXIT_PARTIAL


def _host(args: argparse.Namespace, lab: Lab) -> int:
    check_root()
    lab.host(args.name)
    if args.host_command == "poweroff":
        stopped = lab.power_off(args.name)
        print(f"{args.name} is off: {', '.join(stopped)} killed" if stopped else f"{args.name} was already off")
    elif args.host_command == "poweron":
        lab.power_on(args.name)
        print(f"{args.name} is on: virtlockd, libvirtd and agent started; its guests stay off")
    else:
        running = lab.powered(args.name)
        print(f"{args.name} is on: {', '.join(running)} running" if running else f"{args.name} is off")
        return 0 if running else EXIT_POWERED_OFF
    return 0


def _guest(args: argparse.Namespace, lab: Lab) -> int:
    if args.guest_command == "create":
        info = lab.create_guest(
            args.name, args.host, args.memory, args.dirty_mb, args.disk, args.disk_size, fill_mb=args.fill_mb,
            networks=tuple(args.network),
        )
        print(f"{info.name} started on {info.host}; console log {lab.host(info.host).console_log(info.name)}")
    elif args.guest_command == "delete":
        had = lab.delete_guest(args.name)
        print(f"deleted {args.name} from {', '.join(had)}" if had else f"no host had {args.name}; removed its files")
    elif args.guest_command == "list":
        for guest in lab.guests():
            print(f"{guest.name}\t{guest.host}\t{guest.state}\t{'persistent' if guest.persistent else 'transient'}")
    elif args.guest_command == "check":
        report = lab.continuity(args.name)
        where = lab.residency(args.name)[args.name]
        print(f"continuity: {'ok' if report.ok else 'BROKEN'}: {report.explain()}")
        print(f"residency: {where.explain()}")
        return 0 if report.ok and where.single_host else EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
