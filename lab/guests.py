"""Lab guests: define and start, delete, list. Domain XML is a pure function.

Every path in the XML is as seen inside a host's namespace and is valid on all
hosts: the kernel and initrd in the shared cache, the console log under the
per-host /var/log/libvirt (so after a move the destination writes its own
log), a local disk under the per-host /var/lib/libvirt/images, a shared disk in
the lab's shared folder.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

import libvirt

from ferry.lab.errors import LabError
from ferry.lab.image import GuestImage
from ferry.lab.layout import CONSOLE_PATH, IMAGES_PATH, HostLayout, LabLayout
from ferry.lab.libvirt_conn import open_host

DiskKind = Literal["shared", "local", "none"]
DISK_KINDS: tuple[DiskKind, ...] = ("shared", "local", "none")


@dataclass(frozen=True)
class GuestSpec:
    name: str
    host: str
    memory_mib: int = 256
    dirty_mb: int = 0
    disk: DiskKind = "none"
    disk_size_mib: int = 64
    # MiB of memory written once at boot and never again (dirty_mb rewrites its own each second).
    fill_mb: int = 0
    # One interface on each of these libvirt networks (lab/networks.py defines `prod` on some hosts).
    networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class GuestInfo:
    name: str
    host: str
    state: str  # "running", "paused", "shut off", ...
    persistent: bool


def disk_path(layout: LabLayout, spec: GuestSpec) -> PurePosixPath | None:
    """The disk's path in the domain XML (inside the namespace)."""
    if spec.disk == "shared":
        return PurePosixPath(layout.shared_dir) / f"{spec.name}.qcow2"
    if spec.disk == "local":
        return IMAGES_PATH / f"{spec.name}.qcow2"
    return None


def console_path(name: str) -> PurePosixPath:
    return CONSOLE_PATH / f"{name}.log"


def kernel_cmdline(spec: GuestSpec) -> str:
    # panic=-1: a guest whose init dies stops at once instead of hanging unseen.
    return f"console=ttyS0 quiet panic=-1 ferry.dirty_mb={spec.dirty_mb} ferry.fill_mb={spec.fill_mb}"


def domain_xml(spec: GuestSpec, image: GuestImage, disk: PurePosixPath | None) -> str:
    disk_xml = ""
    if disk is not None:
        disk_xml = f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file={quoteattr(str(disk))}/>
      <target dev='vda' bus='virtio'/>
    </disk>"""
    interfaces_xml = "".join(
        f"""
    <interface type='network'>
      <source network={quoteattr(network)}/>
      <model type='virtio'/>
    </interface>"""
        for network in spec.networks
    )
    # type='qemu' (TCG): /dev/kvm exists on the lab machines but KVM guests hang there.
    return f"""\
<domain type='qemu'>
  <name>{escape(spec.name)}</name>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>{escape(kernel_cmdline(spec))}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>{disk_xml}{interfaces_xml}
    <serial type='file'>
      <source path={quoteattr(str(console_path(spec.name)))} append='on'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def create_disk(path: Path, size_mib: int, content: Path | None = None) -> None:
    """A qcow2 image; from ``content`` (a raw file, grown to the size) when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mib}M"]
    else:
        argv = ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(content), str(path)]
    _qemu_img(argv, f"Could not create the disk image {path}")
    if content is not None:
        _qemu_img(["qemu-img", "resize", "-q", str(path), f"{size_mib}M"], f"Could not resize {path}")


def disk_virtual_size(path: Path) -> int:
    """Bytes the guest sees; a destination image for storage copy needs exactly this size."""
    out = _qemu_img(["qemu-img", "info", "-U", "--output=json", str(path)], f"Could not read {path}")
    return int(json.loads(out)["virtual-size"])


def create_disk_like(source: Path, dest: Path) -> None:
    """An empty qcow2 at ``dest`` of ``source``'s size: what storage copy needs on the destination."""
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    size = disk_virtual_size(source)
    _qemu_img(["qemu-img", "create", "-q", "-f", "qcow2", str(dest), str(size)], f"Could not create {dest}")


def _qemu_img(argv: list[str], what: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"{what}: {result.stderr.strip()}.")
    return result.stdout


def find_guest(layout: LabLayout, name: str) -> list[GuestInfo]:
    """Every host that knows a domain of this name (defined or running)."""
    return [info for info in list_guests(layout) if info.name == name]


def list_guests(layout: LabLayout, hosts: Iterable[HostLayout] | None = None) -> list[GuestInfo]:
    """Guests on ``hosts`` (default: all hosts of the lab)."""
    found = []
    for host in layout.hosts if hosts is None else hosts:
        with open_host(host) as conn:
            for dom in conn.listAllDomains():
                state, _reason = dom.state()
                found.append(GuestInfo(dom.name(), host.name, STATE_NAMES.get(state, str(state)), bool(dom.isPersistent())))
    return sorted(found, key=lambda g: (g.name, g.host))


STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


def create_guest(layout: LabLayout, image: GuestImage, spec: GuestSpec, disk_content: Path | None = None) -> GuestInfo:
    """Define (persistently) and start the guest on its host."""
    host = layout.host(spec.host)
    existing = find_guest(layout, spec.name)
    if existing:
        raise LabError(f"A guest named {spec.name} already exists on {', '.join(g.host for g in existing)}; delete it first.")
    disk = disk_path(layout, spec)
    if disk is not None:
        create_disk(host.outside(disk), spec.disk_size_mib, disk_content)
    host.console_dir.mkdir(parents=True, exist_ok=True)
    host.console_log(spec.name).unlink(missing_ok=True)
    with open_host(host) as conn:
        try:
            dom = conn.defineXML(domain_xml(spec, image, disk))
        except libvirt.libvirtError as error:
            raise LabError(f"{host.name} refused to define {spec.name}: {error.get_error_message()}.") from None
        try:
            dom.create()
        except libvirt.libvirtError as error:
            dom.undefine()
            raise LabError(f"{host.name} could not start {spec.name}: {error.get_error_message()}.") from None
    return GuestInfo(spec.name, host.name, "running", True)


def delete_guest(layout: LabLayout, name: str) -> list[str]:
    """Destroy and undefine the guest wherever it is; remove its disks and console logs.

    Returns the hosts that had it. Deleting a guest nobody has is not an error.
    """
    had = []
    for host in layout.hosts:
        with open_host(host) as conn:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError:
                dom = None
            if dom is not None:
                had.append(host.name)
                if dom.isActive():
                    try:
                        dom.destroy()
                    except libvirt.libvirtError as error:
                        raise LabError(f"{host.name} could not stop {name}: {error.get_error_message()}.") from None
                if dom.isPersistent():
                    dom.undefine()
        host.console_log(name).unlink(missing_ok=True)
        host.outside(IMAGES_PATH / f"{name}.qcow2").unlink(missing_ok=True)
    (layout.shared_dir / f"{name}.qcow2").unlink(missing_ok=True)
    return had
