"""The libvirt backend: the only module of Ferry that imports `libvirt`.

Every libvirt call runs in a worker thread: a blocking call on the event loop
stalls the whole agent (seen: `jobStats()` blocking a loop for ~5 s).
"""

import asyncio
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TypeVar

import libvirt

from agent.hypervisor.base import HypervisorUnavailable, NodeFacts, version_string
from proto.host import VmInfo, VmState

T = TypeVar("T")

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

    def __init__(self, uri: str) -> None:
        _silence_default_error_printer()
        self._uri = uri
        self._conn: libvirt.virConnect | None = None
        # Opening and dropping the connection happen in worker threads; one at a time.
        self._conn_lock = threading.Lock()

    async def _call(self, fn: Callable[[libvirt.virConnect], T]) -> T:
        return await asyncio.to_thread(self._call_sync, fn)

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

    async def list_vms(self) -> list[VmInfo]:
        return await self._call(_read_vms)

    async def close(self) -> None:
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


def _read_vms(conn: libvirt.virConnect) -> list[VmInfo]:
    vms = []
    for dom in conn.listAllDomains():
        try:
            state, max_mem_kib, _mem_kib, vcpus, _cpu_time = dom.info()
            vms.append(
                VmInfo(
                    name=dom.name(),
                    uuid=dom.UUIDString(),
                    vcpus=vcpus,
                    memory_mib=max_mem_kib // 1024,
                    state=_STATE.get(state, VmState.OTHER),
                    persistent=bool(dom.isPersistent()),
                )
            )
        except libvirt.libvirtError as exc:
            # A domain that vanished between listing and reading (migrated away,
            # undefined) is simply not there any more.
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    return sorted(vms, key=lambda vm: vm.name)
