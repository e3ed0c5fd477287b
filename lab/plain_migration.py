"""Move a guest with plain libvirt, no Ferry: the baseline for tests and benchmarks.

Peer-to-peer: the source libvirtd dials the destination's peer URI itself
(from inside its own namespace, with its own client certificate), so this
process only talks to the source.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from ferry.lab.errors import LabError
from ferry.lab.guests import create_disk_like
from ferry.lab.layout import HostLayout, LabLayout
from ferry.lab.libvirt_conn import open_host

BASE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)


@dataclass(frozen=True)
class MigrationOptions:
    tls: bool = False
    copy_storage: bool = False  # VIR_MIGRATE_NON_SHARED_DISK; the destination image is pre-created
    # The lab's "shared" folder is on a local filesystem, which libvirt calls
    # unsafe for shared disks; real shared storage needs no such flag.
    unsafe: bool = False
    bandwidth_mib: int = 0  # MiB/s, 0: unlimited
    timeout: float = 120.0

    def flags(self) -> int:
        flags = BASE_FLAGS
        if self.tls:
            flags |= libvirt.VIR_MIGRATE_TLS
        if self.copy_storage:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        if self.unsafe:
            flags |= libvirt.VIR_MIGRATE_UNSAFE
        return flags


@dataclass(frozen=True)
class MigrationResult:
    seconds: float
    # The completed job's statistics as the source reports them (keys such as
    # "downtime", "memory_total", "data_total"); empty when libvirt kept none.
    stats: dict[str, int | float] = field(default_factory=dict)

    @property
    def downtime_ms(self) -> float | None:
        value = self.stats.get("downtime")
        return None if value is None else float(value)


def migrate(layout: LabLayout, guest: str, source: str, dest: str, options: MigrationOptions = MigrationOptions()) -> MigrationResult:
    """Live-migrate ``guest`` from ``source`` to ``dest``; raises LabError when libvirt fails."""
    src, dst = layout.host(source), layout.host(dest)
    # The control connection is always TLS (libvirtd listens on nothing else); `tls` is the stream's.
    uri = dst.peer_uri
    with open_host(src) as conn:
        try:
            dom = conn.lookupByName(guest)
        except libvirt.libvirtError:
            raise LabError(f"{source} has no guest {guest}.") from None
        params: dict[str, object] = {}
        if options.copy_storage:
            local = _local_disks(dom, src)
            for path in local.values():
                create_disk_like(src.outside(path), dst.outside(path))
            # Only the per-host disks: a disk in the shared folder is the same file on both ends.
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(local)
        if options.bandwidth_mib:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = options.bandwidth_mib
        started = time.monotonic()
        # A thread: the call blocks for the whole migration (the caller may watch meanwhile).
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(dom.migrateToURI3, uri, params, options.flags())
            try:
                future.result(timeout=options.timeout)
            except libvirt.libvirtError as error:
                raise LabError(f"Migrating {guest} from {source} to {dest} failed: {error.get_error_message()}.") from None
            except TimeoutError:
                dom.abortJob()
                raise LabError(f"Migrating {guest} from {source} to {dest} took over {options.timeout:.0f} s; aborted.") from None
        seconds = time.monotonic() - started
    return MigrationResult(seconds, _completed_stats(dst, guest))


def _completed_stats(dest: HostLayout, guest: str) -> dict[str, int | float]:
    """The destination keeps the finished job's statistics; the undefined source does not."""
    with open_host(dest) as conn:
        try:
            return conn.lookupByName(guest).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        except libvirt.libvirtError:
            return {}


def _local_disks(dom: libvirt.virDomain, host: HostLayout) -> dict[str, str]:
    """Target device -> path of the guest's disks on the host's private storage."""
    local = {}
    for disk in ET.fromstring(dom.XMLDesc()).iterfind("./devices/disk[@device='disk']"):
        source, target = disk.find("source"), disk.find("target")
        path = source.get("file") if source is not None else None
        if path and target is not None and host.outside(path) != Path(path):
            local[target.get("dev", "")] = path
    return local
