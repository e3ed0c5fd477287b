"""The libvirt backend: the only module of Ferry that imports `libvirt`.

Every libvirt call runs in a worker thread: a blocking call on the event loop
stalls the whole agent (seen: `jobStats()` blocking a loop for ~5 s).
"""

import asyncio
import math
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import libvirt

from ferry.agent.hypervisor.base import (
    HypervisorUnavailable,
    JobStats,
    LeverRefused,
    MeasurementFailed,
    MigrationFailed,
    MigrationPlan,
    NodeFacts,
    StartRefused,
    VmInventory,
    VmNotFound,
    definition_digest,
    version_string,
)
from ferry.agent.hypervisor.disks import ImagesFolder, create_image, remove_image
from ferry.agent.hypervisor.networks import attachments_of, network_portgroups, read_devices
from ferry.proto.agent import DiskInfo, VmDescription
from ferry.proto.ha import DOMAIN_XML_MAX
from ferry.proto.host import UnreadableVm, VmInfo, VmState
from ferry.proto.names import VM_NAME_MAX, vm_name_problem
from ferry.proto.network import HostNetworks, LibvirtNetwork

T = TypeVar("T")

BASE_MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    # Stop on a disk I/O error instead of carrying on with a broken guest.
    | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
)
# libvirt's "no limit" for migration speed (MiB/s): 0 is not accepted as unlimited everywhere.
UNLIMITED_MIB = 8796093022207
# Long-running migrations get their own threads so they never starve short calls.
MAX_CONCURRENT_MIGRATIONS = 16
MIB = 1024 * 1024
# Why an incoming domain waits paused: QEMU started with -incoming, memory not yet all here.
INCOMING_PAUSE_REASONS = (libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP)
# (state, reason) of a domain a migration is still coming into: waiting for its
# memory, or running post-copy (or paused in it) while pages still arrive.
INCOMING_STATES = frozenset({
    *((libvirt.VIR_DOMAIN_PAUSED, reason) for reason in INCOMING_PAUSE_REASONS),
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY),
    (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY),
})
# A dirty-rate measurement is given this long beyond its own seconds to report.
MEASURE_GRACE_SECONDS = 3.0
MEASURE_POLL_SECONDS = 0.1

_STATE = {
    libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: VmState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: VmState.SHUTOFF,
}


def _silence_default_error_printer() -> None:
    # libvirt prints every error to stderr by default; we report errors ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class LibvirtHypervisor:
    backend = "libvirt"

    def __init__(self, uri: str, images: ImagesFolder) -> None:
        _silence_default_error_printer()
        self._uri = uri
        self._images = images
        self._conn: libvirt.virConnect | None = None
        # Opening and dropping the connection happen in worker threads; one at a time.
        self._conn_lock = threading.Lock()
        self._migrations = ThreadPoolExecutor(MAX_CONCURRENT_MIGRATIONS, thread_name_prefix="migrate")
        # QEMU refuses a second dirty-rate calculation while one runs: our own callers queue
        # instead (one small lock per VM name ever measured).
        self._measuring: dict[str, asyncio.Lock] = {}

    async def _call(self, fn: Callable[[libvirt.virConnect], T]) -> T:
        return await asyncio.to_thread(self._call_sync, fn)

    async def _on_domain(self, name: str, fn: Callable[[libvirt.virDomain], T]) -> T:
        """Runs `fn` on the named domain in a thread; VmNotFound when there is none."""

        def call(conn: libvirt.virConnect) -> T:
            dom = _lookup(conn, name)
            try:
                return fn(dom)
            except libvirt.libvirtError as exc:
                # The domain went away between the lookup and the call (a migration
                # that just finished undefines it): the same as not finding it.
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    raise VmNotFound(name) from None
                raise

        return await self._call(call)

    def _call_sync(self, fn: Callable[[libvirt.virConnect], T]) -> T:
        conn = self._connection()
        try:
            return fn(conn)
        except libvirt.libvirtError as exc:
            if not conn.isAlive():
                self._drop(conn)
                raise HypervisorUnavailable(
                    f"lost the connection to libvirt at {self._uri}: {exc.get_error_message()}"
                ) from None
            raise

    def _connection(self) -> libvirt.virConnect:
        with self._conn_lock:
            if self._conn is not None and self._conn.isAlive():
                return self._conn
            try:
                self._conn = libvirt.open(self._uri)
            except libvirt.libvirtError as exc:
                self._conn = None
                raise HypervisorUnavailable(
                    f"cannot connect to libvirt at {self._uri}: {exc.get_error_message()}"
                ) from None
            return self._conn

    def _drop(self, conn: libvirt.virConnect) -> None:
        with self._conn_lock:
            if self._conn is conn:
                self._conn = None
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    async def node_facts(self) -> NodeFacts:
        return await self._call(_read_node_facts)

    async def list_vms(self) -> VmInventory:
        return await self._call(_read_vms)

    async def network_facts(self) -> HostNetworks:
        try:
            networks = await self._call(_read_networks)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(f"cannot read libvirt's networks at {self._uri}: {exc.get_error_message()}") from None
        return HostNetworks(networks=networks, devices=await asyncio.to_thread(read_devices))

    async def describe_vm(self, name: str, *, definition: bool = False) -> VmDescription:
        return await self._on_domain(name, lambda dom: _describe(dom, self._images, definition=definition))

    async def start_defined(self, xml: str, uuid: str) -> bool:
        return await self._call(lambda conn: _start_defined(conn, xml, uuid))

    async def retire_defined(self, uuid: str) -> str:
        return await self._call(lambda conn: _retire_defined(conn, uuid))

    async def vm_state(self, name: str) -> VmState | None:
        try:
            state = await self._on_domain(name, lambda dom: dom.state()[0])
        except VmNotFound:
            return None
        return _STATE.get(state, VmState.OTHER)

    async def cpu_incompatibility(self, vm: VmDescription) -> str | None:
        if not vm.cpu_xml:
            return None

        def compare(conn: libvirt.virConnect) -> str | None:
            try:
                result = conn.compareHypervisorCPU(None, vm.arch or None, None, vm.virt_type or None, vm.cpu_xml, 0)
            except libvirt.libvirtError as exc:
                return exc.get_error_message()
            if result == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
                return "the hypervisor cannot provide the guest's CPU model and features"
            return None

        return await self._call(compare)

    async def storage_problem(self, disk: DiskInfo) -> str | None:
        path = self._images.host_path(disk.path)
        if not await asyncio.to_thread(os.path.exists, path):
            return f"{disk.path} ({disk.target}) is not reachable here"
        return None

    async def create_disk(self, disk: DiskInfo) -> bool:
        return await create_image(self._images.host_path(disk.path), disk)

    async def remove_disk(self, path: str) -> bool:
        return await remove_image(self._images.host_path(path))

    async def migrate(self, name: str, plan: MigrationPlan) -> None:
        def run() -> None:
            conn = self._connection()
            try:
                dom = _lookup(conn, name)
                try:
                    dom.migrateSetMaxDowntime(plan.max_downtime_ms, 0)
                except libvirt.libvirtError:
                    pass  # an older QEMU keeps its default; not a reason to refuse
                dom.migrateToURI3(plan.peer_uri, _migrate_params(plan), _migrate_flags(plan))
            except libvirt.libvirtError as exc:
                raise MigrationFailed(exc.get_error_message()) from None

        await asyncio.get_running_loop().run_in_executor(self._migrations, run)

    async def measure_dirty_rate(self, name: str, seconds: float) -> int:
        """QEMU's dirty-rate calculation in page-sampling mode (libvirt >= 7.2, QEMU >= 5.2),
        which needs neither KVM nor a dirty ring. It hashes a sample of pages (512 per
        GiB) at the start and at the end of the period and counts those that changed:
        the result is the guest's dirty set over that period, divided by its length.
        libvirt takes whole seconds: `seconds` is rounded up. Concurrent calls for the
        same VM run one after the other; one started outside Ferry (virsh
        domdirtyrate-calc) makes this one fail."""
        if not 0 < seconds <= 60:
            raise ValueError(f"a dirty rate is measured over 0 to 60 s, not {seconds}")
        async with self._measuring.setdefault(name, asyncio.Lock()):
            return await self._measure_dirty_rate(name, math.ceil(seconds))

    async def _measure_dirty_rate(self, name: str, period: int) -> int:
        def start(dom: libvirt.virDomain) -> object:
            if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
                raise MeasurementFailed(f"{name} is not running: only a running guest's dirty rate can be measured")
            before = _dirty_rate_stats(dom).get("dirtyrate.calc_start_time", -1)
            dom.startDirtyRateCalc(period, libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING)
            return before

        try:
            previous_start = await self._on_domain(name, start)
            await asyncio.sleep(period)
            async with asyncio.timeout(MEASURE_GRACE_SECONDS):
                while True:
                    stats = await self._on_domain(name, _dirty_rate_stats)
                    measured = stats.get("dirtyrate.calc_status") == libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED
                    if measured and stats.get("dirtyrate.calc_start_time") != previous_start:
                        return int(stats.get("dirtyrate.megabytes_per_second", 0)) * MIB
                    await asyncio.sleep(MEASURE_POLL_SECONDS)
        except TimeoutError:
            raise MeasurementFailed(
                f"{name}'s dirty rate was not measured within {period + MEASURE_GRACE_SECONDS:g} s"
            ) from None
        except libvirt.libvirtError as exc:
            raise MeasurementFailed(f"cannot measure {name}'s dirty rate: {exc.get_error_message()}") from None

    async def job_stats(self, name: str) -> JobStats | None:
        try:
            stats = await self._on_domain(name, _job_stats)
        except VmNotFound:
            return None
        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            return None
        return stats

    async def completed_job_stats(self, name: str) -> JobStats:
        # KEEP_COMPLETED: an operator can still read them with `virsh domjobinfo --completed`.
        return await self._on_domain(
            name,
            lambda dom: dom.jobStats(
                libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
            )
        )

    async def abort_job(self, name: str) -> bool:
        def abort(dom: libvirt.virDomain) -> bool:
            try:
                dom.abortJob()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                    return False  # no job is running
                raise
            return True

        try:
            return await self._on_domain(name, abort)
        except VmNotFound:
            return False

    async def set_bandwidth(self, name: str, bandwidth_mib: int) -> None:
        await self._on_domain(name, lambda dom: dom.migrateSetMaxSpeed(bandwidth_mib or UNLIMITED_MIB, 0))

    async def set_max_downtime(self, name: str, downtime_ms: int) -> None:
        await self._lever(name, lambda dom: dom.migrateSetMaxDowntime(downtime_ms, 0))

    async def start_postcopy(self, name: str) -> None:
        await self._lever(name, lambda dom: dom.migrateStartPostCopy(0))

    async def _lever(self, name: str, fn: Callable[[libvirt.virDomain], object]) -> None:
        """A change to the running migration; libvirt's refusal as LeverRefused."""
        try:
            await self._on_domain(name, fn)
        except libvirt.libvirtError as exc:
            raise LeverRefused(exc.get_error_message()) from None

    async def destroy_incoming(self, name: str) -> bool:
        def destroy(dom: libvirt.virDomain) -> bool:
            state, reason = dom.state()
            incoming = state == libvirt.VIR_DOMAIN_PAUSED and reason in INCOMING_PAUSE_REASONS
            if not incoming:
                return False
            dom.destroy()
            return True

        try:
            return await self._on_domain(name, destroy)
        except VmNotFound:
            return False

    async def remove_inactive(self, name: str) -> bool:
        def undefine(dom: libvirt.virDomain) -> bool:
            if dom.isActive():
                return False
            # The NVRAM file is left alone: the copy that runs elsewhere may share it.
            dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
            )
            return True

        try:
            return await self._on_domain(name, undefine)
        except VmNotFound:
            return False

    async def adopt_incoming(self, vm: VmDescription) -> None:
        pass  # libvirt defined and started it (PERSIST_DEST)

    async def close(self) -> None:
        self._migrations.shutdown(wait=False, cancel_futures=True)

        def close_sync() -> None:
            with self._conn_lock:
                conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except libvirt.libvirtError:
                    pass

        await asyncio.to_thread(close_sync)


def _read_memory_mib(conn: libvirt.virConnect) -> tuple[int, int]:
    """Host-wide total and available memory.

    `getInfo()` and `getFreeMemory()` sum the NUMA cells, which can miss memory
    that no cell reports (seen: 4.6 of 24 GiB on a VM with hot-plugged memory);
    the all-cells statistics come from /proc/meminfo. Buffers and page cache
    are reclaimable, so they count as available.
    """
    stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
    available_kib = stats.get("free", 0) + stats.get("buffers", 0) + stats.get("cached", 0)
    return stats["total"] // 1024, available_kib // 1024


def _read_node_facts(conn: libvirt.virConnect) -> NodeFacts:
    _model, _cells_memory_mib, cpus, *_ = conn.getInfo()
    memory_total_mib, memory_free_mib = _read_memory_mib(conn)
    caps = ET.fromstring(conn.getCapabilities())
    return NodeFacts(
        host_uuid=caps.findtext("host/uuid", default=""),
        cpu_model=caps.findtext("host/cpu/model", default=""),
        arch=caps.findtext("host/cpu/arch", default=""),
        cpus=cpus,
        memory_total_mib=memory_total_mib,
        memory_free_mib=memory_free_mib,
        libvirt_version=version_string(conn.getLibVersion()),
        qemu_version=version_string(conn.getVersion()),
    )


def _read_vms(conn: libvirt.virConnect) -> VmInventory:
    vms, unreadable = [], []
    for dom in conn.listAllDomains():
        name = ""
        try:
            name = dom.name()
            problem = vm_name_problem(name)
            if problem is not None:
                unreadable.append(_unreadable(name, f"Ferry cannot carry this name: {problem}"))
                continue
            state, max_mem_kib, _mem_kib, vcpus, _cpu_time = dom.info()
            vms.append(
                VmInfo(
                    name=name,
                    uuid=dom.UUIDString(),
                    vcpus=vcpus,
                    memory_mib=max_mem_kib // 1024,
                    state=_STATE.get(state, VmState.OTHER),
                    persistent=bool(dom.isPersistent()),
                    attachments=attachments_of(ET.fromstring(dom.XMLDesc(0))),
                    definition=definition_digest(_definition_xml(dom)) if dom.isPersistent() else "",
                )
            )
        except libvirt.libvirtError as exc:
            # A domain that vanished between listing and reading (migrated away,
            # undefined) is simply not there any more.
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue
            if not conn.isAlive():
                raise
            unreadable.append(_unreadable(name or "?", exc.get_error_message()))
        except ET.ParseError as exc:
            unreadable.append(_unreadable(name, f"its domain XML does not parse: {exc}"))
    return VmInventory(sorted(vms, key=lambda vm: vm.name), unreadable)


def _unreadable(name: str, reason: str) -> UnreadableVm:
    shown = name if len(name) <= VM_NAME_MAX else name[: VM_NAME_MAX - 1] + "…"
    return UnreadableVm(name=shown, reason=reason[:1000])


def _read_networks(conn: libvirt.virConnect) -> list[LibvirtNetwork]:
    try:
        listed = conn.listAllNetworks()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
            return []  # a libvirtd without its network driver has no libvirt networks
        raise
    found = []
    for net in listed:
        try:
            found.append(
                LibvirtNetwork(name=net.name(), active=bool(net.isActive()), portgroups=network_portgroups(net.XMLDesc(0)))
            )
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
    return sorted(found, key=lambda n: n.name)


def _dirty_rate_stats(dom: libvirt.virDomain) -> dict[str, object]:
    """The domain's "dirtyrate.*" statistics: calc_status, calc_start_time, calc_period,
    megabytes_per_second (only once measured), calc_mode."""
    found = dom.connect().domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE)
    return found[0][1] if found else {}


def _lookup(conn: libvirt.virConnect, name: str) -> libvirt.virDomain:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise VmNotFound(name) from None
        raise


def _definition_xml(dom: libvirt.virDomain) -> str:
    """The persistent definition as another host can define it: inactive (not the
    running state), migratable (no host-made defaults), without secrets."""
    return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_MIGRATABLE)


# What a definition leaves that belongs to the copy that runs elsewhere now; NVRAM stays (the guest's own data).
_RETIRE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
)


def _retire_defined(conn: libvirt.virConnect, uuid: str) -> str:
    try:
        dom = conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return "missing"
        raise
    if dom.isActive():
        return "running"
    try:
        dom.setAutostart(0)
        dom.undefineFlags(_RETIRE_FLAGS)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return "missing"
        raise
    return "retired"


def _start_defined(conn: libvirt.virConnect, xml: str, uuid: str) -> bool:
    try:
        held = conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
        held = None
    if held is not None and held.isActive():
        return False
    try:
        dom = conn.defineXML(xml)
    except libvirt.libvirtError as exc:
        if not conn.isAlive():
            raise
        raise StartRefused(exc.get_error_message()) from None
    try:
        dom.create()
    except libvirt.libvirtError as exc:
        if not conn.isAlive():
            raise
        if held is None:
            # Leave no definition behind that someone could start by hand later.
            try:
                dom.undefine()
            except libvirt.libvirtError:
                pass
        raise StartRefused(exc.get_error_message()) from None
    return True


def _describe(dom: libvirt.virDomain, images: ImagesFolder, *, definition: bool = False) -> VmDescription:
    state, max_mem_kib, _mem_kib, vcpus, _cpu_time = dom.info()
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
    cpu = root.find("cpu")
    cpu_xml = ET.tostring(cpu, encoding="unicode") if cpu is not None and cpu.find("model") is not None else ""
    disks = []
    for disk in root.iterfind("./devices/disk[@device='disk']"):
        source, target, driver = disk.find("source"), disk.find("target"), disk.find("driver")
        path = source.get("file") if source is not None else None
        if not path or target is None:
            continue  # network and empty disks move without copying
        capacity, _allocation, _physical = dom.blockInfo(path)
        disks.append(
            DiskInfo(
                target=target.get("dev", ""),
                path=path,
                format=driver.get("type", "raw") if driver is not None else "raw",
                capacity_bytes=capacity,
                local=images.is_local(path),
            )
        )
    os_type = root.find("os/type")
    return VmDescription(
        name=dom.name(),
        uuid=dom.UUIDString(),
        vcpus=vcpus,
        memory_mib=max_mem_kib // 1024,
        arch=os_type.get("arch", "") if os_type is not None else "",
        virt_type=root.get("type", ""),
        cpu_xml=cpu_xml,
        disks=disks,
        running=state == libvirt.VIR_DOMAIN_RUNNING,
        attachments=attachments_of(root),
        **(_with_definition(dom) if definition and dom.isPersistent() else {}),
    )


def _with_definition(dom: libvirt.virDomain) -> dict[str, str]:
    xml = _definition_xml(dom)
    # One larger than any message may carry is not sent: the coordinator says it has no copy.
    return {"domain_xml": xml if len(xml) <= DOMAIN_XML_MAX else "", "definition": definition_digest(xml)}


def _migrate_flags(plan: MigrationPlan) -> int:
    flags = BASE_MIGRATE_FLAGS
    if plan.tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if plan.copy_disks:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
    if plan.unsafe:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    if plan.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if plan.postcopy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    return flags


def _migrate_params(plan: MigrationPlan) -> dict[str, object]:
    params: dict[str, object] = {}
    if plan.bandwidth_mib:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = plan.bandwidth_mib
    if plan.migration_address:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{plan.migration_address}"
    if plan.copy_disks:
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(plan.copy_disks)
    if plan.auto_converge:
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = plan.auto_converge_initial
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] = plan.auto_converge_increment
    return params


def _job_stats(dom: libvirt.virDomain) -> JobStats:
    """virDomainGetJobStats, which a destination refuses while a migration comes
    in ("available only on the source host"): that refusal, with the domain
    waiting for its memory or running post-copy, is itself the news that a job
    runs. A shut-off domain has none (libvirt calls asking an error)."""
    try:
        return dom.jobStats()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and not dom.isActive():
            return {"type": libvirt.VIR_DOMAIN_JOB_NONE}  # defined, shut off: no job can run
        if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_UNSUPPORTED:
            raise
        if tuple(dom.state()) not in INCOMING_STATES:
            raise
        return {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "incoming": True}
