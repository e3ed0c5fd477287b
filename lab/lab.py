"""The Lab: start, inspect and stop a local multi-host lab; run guests in it.

This is the Python API the CLI, the pytest fixtures, the demo and the
benchmarks share::

    lab = Lab.create(Path("/var/tmp/ferry-lab"), hosts=3)
    lab.up(ferry=False)
    lab.create_guest("web-1", "hv1", memory_mib=256)
    lab.continuity("web-1").ok
    lab.down()

Another process finds a running lab with ``Lab.attach(dir)`` (state in DIR/lab.json).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from ferry.lab import certs, ferry_services, hosts, networks, processes
from ferry.lab.continuity import ContinuityReport, console_log_times, guest_continuity, last_tick_on, read_console_logs
from ferry.lab.errors import LabError
from ferry.lab.guests import DiskKind, GuestInfo, GuestSpec, create_guest, delete_guest, list_guests
from ferry.lab.image import GuestImage, ensure_guest_image
from ferry.lab.layout import (
    COORDINATORS,
    DEFAULT_ADDRESS_BASE,
    DEFAULT_CACHE_DIR,
    DEFAULT_DIR,
    DEFAULT_HOSTS,
    NATS_SERVERS,
    STATE_FILE_NAME,
    HostLayout,
    LabLayout,
)
from ferry.lab.lost_writes import lost_write_signs
from ferry.lab.nats import free_ports, spawn_nats_server, wait_jetstream, wait_listening, write_nats_config
from ferry.lab.nats_config import NATS_HOST, nats_url
from ferry.lab.nats_security import LAB_ADMIN, LAB_TOOLS, NatsSecurity, lab_identities
from ferry.lab.prereqs import check_programs, check_root
from ferry.lab.processes import ProcessRef
from ferry.lab.residency import Residency, residency
from ferry.lab.state import LabState, load_state, save_state
from ferry.runtime.config import NatsSettings
from ferry.runtime.identity import Role


def nats_role(name: str) -> str:
    return f"nats-server:{name}"


def coordinator_role(name: str) -> str:
    return f"coordinator:{name}"


NATS_ROLES = tuple(nats_role(name) for name in NATS_SERVERS)
COORDINATOR_ROLES = tuple(coordinator_role(name) for name in COORDINATORS)
# A part of `up` that is no process: JetStream answering on the cluster.
JETSTREAM_PART = "jetstream"
# How long a restarted nats-server waits for its recorded port to be released.
PORT_RELEASE_WAIT = 10.0


def libvirtd_role(host: HostLayout) -> str:
    return f"libvirtd:{host.name}"


def virtlockd_role(host: HostLayout) -> str:
    """libvirt's lock daemon of the host: found from its pid file, not recorded (lab/hosts.py)."""
    return f"virtlockd:{host.name}"


def agent_role(host: HostLayout) -> str:
    return f"agent:{host.name}"


@dataclass
class UpReport:
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # part -> sentence

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class PartStatus:
    role: str
    running: bool
    pid: int | None


@dataclass(frozen=True)
class LabStatus:
    dir: Path
    nats_urls: tuple[str, ...]  # of the nats-servers that run
    parts: tuple[PartStatus, ...]
    guests: tuple[GuestInfo, ...]
    problems: tuple[str, ...]  # e.g. a libvirtd that runs but does not answer


class Lab:
    def __init__(self, layout: LabLayout, state: LabState) -> None:
        self.layout = layout
        self._state = state
        self._image: GuestImage | None = None

    # ---- construction -------------------------------------------------------

    @classmethod
    def create(
        cls,
        dir: Path = DEFAULT_DIR,
        hosts: int | None = None,
        address_base: str | None = None,
        cache_dir: Path = DEFAULT_CACHE_DIR,
    ) -> Lab:
        """A lab of this shape in ``dir``; refuses when a lab of another shape runs there.

        A shape left out is the one recorded in ``dir``, else 3 hosts at 127.0.10.N.
        """
        state_file = Path(dir).absolute() / STATE_FILE_NAME
        state = load_state(state_file)
        hosts = hosts or (state.hosts if state else DEFAULT_HOSTS)
        address_base = address_base or (state.address_base if state else DEFAULT_ADDRESS_BASE)
        layout = LabLayout.build(dir, hosts, address_base, cache_dir)
        if state is not None and (state.hosts, state.address_base) != (hosts, address_base):
            if any(processes.is_running(ref) for ref in state.processes.values()):
                raise LabError(
                    f"The lab in {layout.dir} runs {state.hosts} hosts at {state.address_base}.N; "
                    f"run `ferry-lab --dir {layout.dir} down` before starting it with {hosts} hosts at {address_base}.N."
                )
            state = None
        if state is None:
            state = LabState(str(layout.dir), hosts, address_base, str(layout.cache_dir))
        return cls(layout, state)

    @classmethod
    def attach(cls, dir: Path = DEFAULT_DIR) -> Lab:
        """The lab recorded in ``dir`` (started by another process)."""
        state_file = Path(dir).absolute() / STATE_FILE_NAME
        state = load_state(state_file)
        if state is None:
            raise LabError(f"There is no lab in {Path(dir).absolute()} (no {state_file.name}); start one with `ferry-lab up`.")
        layout = LabLayout.build(Path(state.dir), state.hosts, state.address_base, Path(state.cache_dir))
        return cls(layout, state)

    def reload(self) -> None:
        """Read the state file again: another process (`ferry-lab`, `fence_lab`)
        started or killed daemons of this lab."""
        state = load_state(self.layout.state_file)
        if state is not None:
            self._state = state

    # ---- what the lab is ----------------------------------------------------

    @property
    def dir(self) -> Path:
        return self.layout.dir

    @property
    def hosts(self) -> tuple[HostLayout, ...]:
        return self.layout.hosts

    def host(self, name: str) -> HostLayout:
        return self.layout.host(name)

    @property
    def shared_dir(self) -> Path:
        return self.layout.shared_dir

    @property
    def nats_urls(self) -> list[str]:
        """Every nats-server's client URL, n1's first, whether it runs or not: a
        client given all of them outlives the loss of any one."""
        if any(name not in self._state.nats_ports for name in NATS_SERVERS):
            raise LabError(f"The lab in {self.dir} has not started its nats-servers yet.")
        return [nats_url(self._state.nats_ports[name]) for name in NATS_SERVERS]

    @property
    def nats_servers(self) -> str:
        """The URLs joined by commas, as `ferry --server` and $FERRY_NATS_URL take them."""
        return ",".join(self.nats_urls)

    @property
    def nats_security(self) -> NatsSecurity:
        return NatsSecurity(self.layout.nats_security_dir)

    def nats_settings(self, name: str = LAB_ADMIN, role: Role = Role.ADMIN, **options: float) -> NatsSettings:
        """How a client reaches the lab's NATS as one of its identities (default: the
        lab's admin operator; LAB_TOOLS for raw JetStream, as a coordinator)."""
        return self.nats_security.settings(self.nats_urls, name, role, **options)

    def cli_args(self, name: str = LAB_ADMIN, role: Role = Role.ADMIN) -> list[str]:
        """`ferry` options that reach the lab as that identity."""
        settings = self.nats_settings(name, role)
        return ["--server", self.nats_servers, "--identity", settings.identity, "--tls-ca", settings.tls_ca]

    def cli_env(self, name: str = LAB_ADMIN, role: Role = Role.ADMIN) -> dict[str, str]:
        """The same as environment variables (what `ferry-lab up` tells a shell to export)."""
        settings = self.nats_settings(name, role)
        return {"FERRY_NATS_URL": self.nats_servers, "FERRY_IDENTITY": settings.identity, "FERRY_NATS_TLS_CA": settings.tls_ca}

    def _reload_nats(self) -> None:
        """New identities: running servers read their authorization again."""
        for name in NATS_SERVERS:
            ref = self.process(nats_role(name))
            if ref is not None:
                os.kill(ref.pid, signal.SIGHUP)

    def _nats_running(self, name: str) -> bool:
        return self.process(nats_role(name)) is not None

    def process(self, role: str) -> ProcessRef | None:
        ref = self._state.processes.get(role)
        return ref if processes.is_running(ref) else None

    # ---- up -------------------------------------------------------------------

    def up(self, ferry: bool = True) -> UpReport:
        """Start whatever part of the lab is not running. Safe to call again."""
        check_root()
        check_programs()
        report = UpReport()
        self._prepare_files()
        self._up_nats(report)
        self._up_libvirtds(report)
        self._up_networks(report)
        try:
            self.image()
        except LabError as error:
            report.failed["guest image"] = str(error)
        if ferry and not any(part in report.failed for part in (*NATS_ROLES, JETSTREAM_PART)):
            report_ferry = self.start_ferry()
            report.started += report_ferry.started
            report.already_running += report_ferry.already_running
            report.failed.update(report_ferry.failed)
        return report

    def _prepare_files(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        save_state(self.layout.state_file, self._state)
        try:
            certs.ensure_pki(self.layout)
            security = NatsSecurity.create(self.layout.nats_security_dir)
            added = security.ensure(lab_identities([h.name for h in self.hosts], COORDINATORS))
        except (OSError, ValueError) as error:
            raise LabError(f"Could not write the lab's certificates under {self.dir}: {error}.") from None
        if added:
            self._reload_nats()
        for host in self.hosts:
            hosts.prepare_host_dirs(host)
            hosts.write_host_configs(host, self.layout.lockspace_dir)

    def _record(self, role: str, ref: ProcessRef | None) -> None:
        if ref is None:
            self._state.processes.pop(role, None)
        else:
            self._state.processes[role] = ref
        save_state(self.layout.state_file, self._state)

    def _up_nats(self, report: UpReport) -> None:
        """Start the nats-servers that are not running, then wait until JetStream
        answers on the cluster (also when all were running: `up` promises it)."""
        stopped = [name for name in NATS_SERVERS if not self._nats_running(name)]
        report.already_running += [nats_role(name) for name in NATS_SERVERS if name not in stopped]
        self._start_nats_servers(stopped, report)
        if any(nats_role(name) in report.failed for name in NATS_SERVERS):
            return
        try:
            wait_jetstream(self.nats_urls, settings=self.nats_settings(LAB_TOOLS, Role.COORDINATOR))
        except LabError as error:
            report.failed[JETSTREAM_PART] = f"{error} See {self.layout.nats_log('n*')}."

    def _start_nats_servers(self, names: list[str], report: UpReport) -> None:
        """Start these servers on their recorded ports and stores; all first, then
        wait for each to listen (a cluster forms when its servers come up together)."""
        self._choose_nats_ports()
        for name in NATS_SERVERS:
            # Every config, so each lists the routes as they are now.
            write_nats_config(self.layout, name, self._state.nats_ports, self._state.route_ports)
        starting: dict[str, ProcessRef] = {}
        for name in names:
            try:
                ref = spawn_nats_server(self.layout, name)
            except LabError as error:
                report.failed[nats_role(name)] = str(error)
                continue
            self._record(nats_role(name), ref)
            starting[name] = ref
        for name, ref in starting.items():
            port = self._state.nats_ports[name]
            try:
                wait_listening(self.layout, name, port, ref)
                report.started.append(f"{nats_role(name)} at {nats_url(port)}")
            except LabError as error:
                report.failed[nats_role(name)] = str(error)

    def _choose_nats_ports(self) -> None:
        """A client and a route port per server: the recorded one while its server runs
        or the port is free, else a new free one no other server has (recorded in lab.json)."""
        for ports in (self._state.nats_ports, self._state.route_ports):
            for name in NATS_SERVERS:
                port = ports.get(name, 0)
                if port and (self._nats_running(name) or _port_frees_up(port)):
                    continue
                taken = {*self._state.nats_ports.values(), *self._state.route_ports.values()}
                ports[name] = free_ports(1, taken)[0]
        save_state(self.layout.state_file, self._state)

    def _up_libvirtds(self, report: UpReport) -> None:
        starting = {}
        for host in self.hosts:
            role = libvirtd_role(host)
            try:
                # Its lock daemon first, also under a libvirtd that runs (one per host, never two).
                started = hosts.ensure_virtlockd(host)
            except LabError as error:
                report.failed[role] = f"not started without its lock daemon: {error}"
                continue
            (report.started if started else report.already_running).append(virtlockd_role(host))
            if self.process(role):
                report.already_running.append(role)
                continue
            try:
                ref = hosts.start_libvirtd(host)
            except LabError as error:
                report.failed[role] = str(error)
                continue
            self._record(role, ref)
            starting[host] = ref
        # Start all first, then wait: the daemons come up side by side.
        for host, ref in starting.items():
            try:
                hosts.wait_libvirtd_ready(host, ref)
                report.started.append(f"{libvirtd_role(host)} at {host.address}")
            except LabError as error:
                report.failed[libvirtd_role(host)] = str(error)

    def _up_networks(self, report: UpReport) -> None:
        for host in networks.network_hosts(self.layout):
            role = f"network {networks.LAB_NETWORK} on {host.name}"
            if libvirtd_role(host) in report.failed:
                continue
            try:
                if networks.start_lab_network(host):
                    report.started.append(role)
                else:
                    report.already_running.append(role)
            except LabError as error:
                report.failed[role] = str(error)

    def start_ferry(self) -> UpReport:
        """Start the agents and the coordinators that are not running (needs most
        nats-servers: JetStream needs a majority of its servers)."""
        report = UpReport()
        running = [name for name in NATS_SERVERS if self._nats_running(name)]
        if len(running) <= len(NATS_SERVERS) // 2:
            report.failed["ferry"] = (
                f"Ferry's daemons need JetStream, which needs most of the lab's {len(NATS_SERVERS)} nats-servers, "
                f"but {len(running)} run; run `ferry-lab up` first."
            )
            return report
        ferry_services.write_ferry_configs(self.layout, self.nats_urls)
        wanted = [(agent_role(h), lambda h=h: ferry_services.start_agent(h), h.agent_log) for h in self.hosts]
        wanted += [
            (coordinator_role(n), lambda n=n: ferry_services.start_coordinator(self.layout, n), self.layout.coordinator_log(n))
            for n in COORDINATORS
        ]
        started: dict[str, tuple[ProcessRef, Path]] = {}
        for role, start, log in wanted:
            if self.process(role):
                report.already_running.append(role)
                continue
            try:
                ref = start()
            except LabError as error:
                report.failed[role] = str(error)
                continue
            self._record(role, ref)
            started[role] = (ref, log)
        report.failed.update(ferry_services.settle(started))
        report.started += [role for role in started if role not in report.failed]
        return report

    # ---- power: the failure a fence answers, and the fence itself --------------

    def power_off(self, host: str) -> list[str]:
        """The host loses power: its agent, its libvirtd, its QEMU processes and its
        virtlockd are killed at once (SIGKILL), nothing is told and nothing cleans up.
        The leases its virtlockd held are free again (on NFS the server frees a dead
        client's locks). Returns what was running."""
        layout = self.host(host)
        daemons = (agent_role(layout), libvirtd_role(layout))
        running = [(role, ref) for role in daemons if (ref := self.process(role)) is not None]
        running += [(f"qemu {ref.pid} of {host}", ref) for ref in hosts.qemu_processes(layout)]
        if (lockd := hosts.virtlockd_process(layout)) is not None:
            running.append((virtlockd_role(layout), lockd))
        _kill_at_once(running)
        for role in daemons:
            self._record(role, None)
        return [what for what, _ref in running]

    def powered(self, host: str) -> list[str]:
        """What of the host runs: empty when it is off. Looked up, not remembered."""
        layout = self.host(host)
        daemons = [role for role in (agent_role(layout), libvirtd_role(layout)) if self.process(role)]
        daemons += [virtlockd_role(layout)] if hosts.virtlockd_process(layout) else []
        return daemons + [f"qemu {ref.pid}" for ref in hosts.qemu_processes(layout)]

    def power_on(self, host: str) -> None:
        """Power back on: its virtlockd and libvirtd (with the lab network), then its
        agent. The guests stay off, as after a power cut."""
        layout = self.host(host)
        role = libvirtd_role(layout)
        hosts.ensure_virtlockd(layout)
        if not self.process(role):
            ref = hosts.start_libvirtd(layout)
            self._record(role, ref)
            hosts.wait_libvirtd_ready(layout, ref)
        if any(h.name == host for h in networks.network_hosts(self.layout)):
            networks.start_lab_network(layout)
        self.start(agent_role(layout))

    # ---- down -----------------------------------------------------------------

    def stop_agent(self, host: str) -> bool:
        """Stop one host's ferry-agent (its libvirtd and guests keep running)."""
        role = agent_role(self.host(host))
        stopped = processes.stop(self._state.processes.get(role))
        self._record(role, None)
        return stopped

    def restart_agent(self, host: str, migration: dict[str, object] | None = None) -> None:
        """Restart one host's ferry-agent, optionally with extra [migration] settings."""
        layout = self.host(host)
        self.stop_agent(host)
        ferry_services.write_agent_config(self.layout, layout, self.nats_urls, migration)
        ref = ferry_services.start_agent(layout)
        self._record(agent_role(layout), ref)
        failed = ferry_services.settle({agent_role(layout): (ref, layout.agent_log)})
        if failed:
            raise LabError(" ".join(failed.values()))

    def kill(self, role: str) -> bool:
        """kill -9 one of the lab's daemons (a crash, not a stop): nothing it would
        do on a clean stop happens. Returns whether it was running."""
        ref = self.process(role)
        if ref is None:
            return False
        _kill_at_once([(role, ref)])
        self._record(role, None)
        return True

    def start(self, role: str) -> None:
        """Start one daemon that is not running, as `up` would: a nats-server on its
        old ports and store (until it serves JetStream again), an agent, or a
        coordinator with its own config."""
        if self.process(role):
            return
        if role in NATS_ROLES:
            self._restart_nats_server(NATS_SERVERS[NATS_ROLES.index(role)])
            return
        if role in COORDINATOR_ROLES:
            name = COORDINATORS[COORDINATOR_ROLES.index(role)]
            ferry_services.write_coordinator_config(self.layout, name, self.nats_urls)
            ref, log = ferry_services.start_coordinator(self.layout, name), self.layout.coordinator_log(name)
        else:
            host = next((h for h in self.hosts if agent_role(h) == role), None)
            if host is None:
                raise LabError(f"the lab has no daemon called {role}")
            ref, log = ferry_services.start_agent(host), host.agent_log
        self._record(role, ref)
        failed = ferry_services.settle({role: (ref, log)})
        if failed:
            raise LabError(" ".join(failed.values()))

    def _restart_nats_server(self, name: str) -> None:
        report = UpReport()
        self._start_nats_servers([name], report)
        if report.failed:
            raise LabError(" ".join(report.failed.values()))
        try:
            # Through this server alone: it has rejoined the cluster.
            wait_jetstream([nats_url(self._state.nats_ports[name])], settings=self.nats_settings(LAB_TOOLS, Role.COORDINATOR))
        except LabError as error:
            raise LabError(f"{error} See {self.layout.nats_log(name)}.") from None

    def stop_ferry(self) -> list[str]:
        stopped = []
        for role in [*COORDINATOR_ROLES, *(agent_role(h) for h in self.hosts)]:
            if processes.stop(self._state.processes.get(role)):
                stopped.append(role)
            self._record(role, None)
        return stopped

    def down(self) -> list[str]:
        """Stop everything the lab started; leaves no daemon, QEMU, mount or namespace.

        Guests are destroyed but stay defined, so a later `up` shows them shut off.
        """
        check_root()
        done = [f"stopped {role}" for role in self.stop_ferry()]
        for host in self.hosts:
            if self.process(libvirtd_role(host)):
                done += [f"destroyed guest {name} on {host.name}" for name in hosts.destroy_guests(host)]
            done += [f"killed QEMU {pid} of {host.name}" for pid in hosts.kill_leftover_qemus(host)]
            if networks.stop_lab_network(host):
                done.append(f"stopped network {networks.LAB_NETWORK} on {host.name}")
        known = [*(libvirtd_role(h) for h in self.hosts), *NATS_ROLES]
        # Then whatever else is recorded: roles of an older lab ("nats-server", "coordinator").
        for role in dict.fromkeys([*known, *self._state.processes]):
            if processes.stop(self._state.processes.get(role)):
                done.append(f"stopped {role}")
            self._record(role, None)
        # Their lock daemons last: one still holding a guest's lease would end that guest.
        done += [f"stopped {virtlockd_role(host)}" for host in self.hosts if hosts.stop_virtlockd(host)]
        done += [f"killed leftover process {pid} ({' '.join(processes.cmdline_of(pid)[:1])})" for pid in sweep_namespaces(self.dir)]
        return done

    # ---- status ---------------------------------------------------------------

    def status(self) -> LabStatus:
        lock_daemons = {virtlockd_role(h): hosts.virtlockd_process(h) for h in self.hosts}
        roles = [*NATS_ROLES, *(role for h in self.hosts for role in (virtlockd_role(h), libvirtd_role(h)))]
        roles += [*(agent_role(h) for h in self.hosts), *COORDINATOR_ROLES]
        found = {role: lock_daemons[role] if role in lock_daemons else self.process(role) for role in roles}
        parts = tuple(PartStatus(role, ref is not None, ref.pid if ref else None) for role, ref in found.items())
        guests: list[GuestInfo] = []
        problems = []
        for host in self.hosts:
            if self.process(libvirtd_role(host)):
                try:
                    guests += list_guests(self.layout, [host])
                except LabError as error:
                    problems.append(str(error))
        return LabStatus(
            self.dir,
            tuple(nats_url(self._state.nats_ports[name]) for name in NATS_SERVERS if self._nats_running(name)),
            parts,
            tuple(guests),
            tuple(problems),
        )

    def is_up(self) -> bool:
        return all(self._nats_running(name) for name in NATS_SERVERS) and all(self.process(libvirtd_role(h)) for h in self.hosts)

    # ---- guests ---------------------------------------------------------------

    def image(self) -> GuestImage:
        if self._image is None:
            self._image = ensure_guest_image(self.layout.cache_dir)
        return self._image

    def create_guest(
        self,
        name: str,
        host: str,
        memory_mib: int = 256,
        dirty_mb: int = 0,
        disk: DiskKind = "none",
        disk_size_mib: int = 64,
        disk_content: Path | None = None,
        fill_mb: int = 0,
        networks: tuple[str, ...] = (),
    ) -> GuestInfo:
        """Define and start a guest; ``disk_content`` (a raw file) fills its disk; one
        interface on each libvirt network in ``networks``."""
        spec = GuestSpec(name, host, memory_mib, dirty_mb, disk, disk_size_mib, fill_mb, tuple(networks))
        return create_guest(self.layout, self.image(), spec, disk_content)

    def delete_guest(self, name: str) -> list[str]:
        return delete_guest(self.layout, name)

    def guests(self) -> list[GuestInfo]:
        return list_guests(self.layout)

    def continuity(self, name: str) -> ContinuityReport:
        return guest_continuity(self.layout, name)

    def residency(self, *names: str) -> dict[str, Residency]:
        return residency(self.layout, names)

    def lost_write_signs(self, name: str) -> str | None:
        """Why the guest looks corrupted by QEMU in a move, or None (lab/lost_writes.py)."""
        logs, times = read_console_logs(self.layout, name), console_log_times(self.layout, name)
        return lost_write_signs(logs, times, self.residency(name)[name].running_on, time.time())

    def wait_for_tick(self, name: str, host: str, at_least: int = 1, timeout: float = 60.0) -> int:
        """Until the guest printed tick ``at_least`` (or later) on ``host``; returns the newest tick."""
        deadline = time.monotonic() + timeout
        while (tick := last_tick_on(self.layout, name, host)) < at_least:
            if time.monotonic() > deadline:
                raise LabError(
                    f"{name} printed no tick {at_least} on {host} within {timeout:.0f} s (newest: {tick}); "
                    f"see {self.host(host).console_log(name)}."
                )
            time.sleep(0.2)
        return tick


def _kill_at_once(running: list[tuple[str, ProcessRef]]) -> None:
    """SIGKILL to each (named) process first, then wait until each is gone: a crash or
    a power cut, not a stop."""
    for _what, ref in running:
        with suppress(ProcessLookupError):
            os.kill(ref.pid, signal.SIGKILL)
    for what, ref in running:
        if not processes.wait_gone(ref, 5.0):
            raise LabError(f"{what} (pid {ref.pid}) survived SIGKILL; it may be stuck in the kernel (state D).")


def sweep_namespaces(dir: Path, timeout: float = 10.0) -> list[int]:
    """Kill any process still inside a lab host's namespace, until none is left."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while pids := processes.pids_with_mounts_from(dir):
        for pid in pids:
            ref = processes.ref_of(pid)
            if ref is not None:
                processes.stop(ref, timeout=3.0)
                killed.append(pid)
        if time.monotonic() > deadline:
            raise LabError(f"Processes {pids} stay inside the lab's mount namespaces in {dir}; stop them by hand.")
    return sorted(set(killed))


def _port_frees_up(port: int, wait: float = PORT_RELEASE_WAIT) -> bool:
    """Whether a recorded port is free, or becomes free within ``wait`` seconds: the
    sockets of a server killed a moment ago can hold it briefly, and a server that
    comes back on another port leaves its peers' configs pointing at the old one."""
    deadline = time.monotonic() + wait
    while not _port_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As nats-server binds: connections of a killed server linger in TIME_WAIT,
        # which must not push its successor to another port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((NATS_HOST, port))
        except OSError:
            return False
        return True
