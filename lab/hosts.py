"""One libvirtd per lab host, each in its own mount namespace.

``unshare -m --propagation private`` gives the daemon a mount namespace whose
changes never reach the machine; inside it, per-host folders are bind-mounted
over libvirt's standard paths, then the shell execs libvirtd (so the pid we
record is libvirtd's). Every QEMU that libvirtd starts inherits the namespace.
The namespace ends when its last process does: stopping the guests and the
daemon leaves no mount behind.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import libvirt

from ferry.lab import configs, processes
from ferry.lab.errors import LabError
from ferry.lab.layout import CONSOLE_PATH, IMAGES_PATH, PRIVATE_PATHS, HostLayout
from ferry.lab.libvirt_conn import open_host, quiet_libvirt
from ferry.lab.processes import ProcessRef

READY_TIMEOUT = 30.0

# Bind-mount each "source target" pair given before "--", then become the command after it.
_MOUNT_AND_EXEC = """\
set -e
while [ "$1" != "--" ]; do
    mkdir -p "$2"
    mount --bind "$1" "$2"
    shift 2
done
shift
exec "$@"
"""


def prepare_host_dirs(host: HostLayout) -> None:
    for private in PRIVATE_PATHS:
        host.outside(private).mkdir(parents=True, exist_ok=True)
    for inside in (IMAGES_PATH, CONSOLE_PATH, "/var/lib/libvirt/qemu", "/var/log/libvirt/qemu", "/etc/libvirt/qemu"):
        host.outside(inside).mkdir(parents=True, exist_ok=True)


def write_host_configs(host: HostLayout) -> None:
    (host.etc_dir / "libvirtd.conf").write_text(configs.libvirtd_conf(host))
    (host.etc_dir / "qemu.conf").write_text(configs.qemu_conf(host))


def libvirtd_argv(host: HostLayout) -> list[str]:
    libvirtd = shutil.which("libvirtd") or "/usr/sbin/libvirtd"
    binds: list[str] = []
    for private in PRIVATE_PATHS:
        binds += [str(host.outside(private)), str(private)]
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", _MOUNT_AND_EXEC, "sh", *binds, "--",
        libvirtd, "--listen", "--pid-file", str(host.libvirtd_pid_file),
    ]  # fmt: skip


def start_libvirtd(host: HostLayout) -> ProcessRef:
    host.libvirtd_pid_file.unlink(missing_ok=True)
    return processes.spawn_detached(libvirtd_argv(host), host.libvirtd_log)


def wait_libvirtd_ready(host: HostLayout, ref: ProcessRef, timeout: float = READY_TIMEOUT) -> None:
    """Until its socket answers; a daemon that dies on the way is an error with its last log line."""
    quiet_libvirt()
    deadline = time.monotonic() + timeout
    while True:
        if not processes.is_running(ref):
            raise LabError(f"libvirtd of {host.name} exited while starting; see {host.libvirtd_log}: {processes.last_line(host.libvirtd_log)}")
        if host.socket.exists():
            try:
                conn = libvirt.open(host.uri)
            except libvirt.libvirtError:
                pass
            else:
                conn.close()
                return
        if time.monotonic() > deadline:
            raise LabError(f"libvirtd of {host.name} did not answer on {host.socket} within {timeout:.0f} s; see {host.libvirtd_log}.")
        time.sleep(0.1)


def destroy_guests(host: HostLayout) -> list[str]:
    """Stop (not undefine) every running guest of the host through its libvirtd."""
    stopped = []
    try:
        with open_host(host) as conn:
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                try:
                    dom.destroy()
                    stopped.append(dom.name())
                except libvirt.libvirtError:
                    pass  # it stopped by itself meanwhile; the pid-file sweep catches the rest
    except LabError:
        pass  # libvirtd is not answering: the pid-file sweep below handles its QEMUs
    return stopped


def qemu_processes(host: HostLayout) -> list[ProcessRef]:
    """The QEMU processes running for the host (from the pid files in its run folder)."""
    found = []
    for pid_file in sorted(host.qemu_pids_dir.glob("*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        ref = processes.ref_of(pid)
        if ref and any("qemu" in Path(arg).name for arg in processes.cmdline_of(pid)[:1]):
            found.append(ref)
    return found


def kill_leftover_qemus(host: HostLayout) -> list[int]:
    """Kill QEMU processes whose pid files are in the host's run folder."""
    killed = []
    for ref in qemu_processes(host):
        processes.stop(ref, timeout=5.0)
        killed.append(ref.pid)
    return killed
