"""One libvirtd per lab host, each in its own mount namespace.

``unshare -m --propagation private`` gives the daemon a mount namespace whose
changes never reach the machine; inside it, per-host folders are bind-mounted
over libvirt's standard paths, then the shell execs libvirtd (so the pid we
record is libvirtd's). Every QEMU that libvirtd starts inherits the namespace.
The namespace ends when its last process does: stopping the guests and the
daemon leaves no mount behind.

Each host also runs virtlockd, libvirt's lock daemon (``lock_manager = "lockd"``
in its qemu.conf): it holds the leases of the host's running guests' disks, in
a lockspace folder on the shared folder. It starts before libvirtd, in a
namespace with the same mounts (so its socket is the host's own
/run/libvirt/virtlockd-sock), and only when the host has none: it outlives a
libvirtd restart, as it is made to, and keeps the leases of the QEMUs that run on.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path, PurePosixPath

import libvirt

from ferry.lab import configs, processes
from ferry.lab.errors import LabError
from ferry.lab.layout import CONSOLE_PATH, IMAGES_PATH, PRIVATE_PATHS, HostLayout
from ferry.lab.libvirt_conn import open_host, quiet_libvirt
from ferry.lab.processes import ProcessRef

READY_TIMEOUT = 30.0
# virtlockd's config inside the host's namespace (its default path, a per-host file).
VIRTLOCKD_CONF_PATH = PurePosixPath("/etc/libvirt/virtlockd.conf")

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


def write_host_configs(host: HostLayout, lockspace: Path) -> None:
    """The host's libvirt configs; ``lockspace``: the shared folder of its disk leases."""
    lockspace.mkdir(parents=True, exist_ok=True)
    (host.etc_dir / "libvirtd.conf").write_text(configs.libvirtd_conf(host))
    (host.etc_dir / "qemu.conf").write_text(configs.qemu_conf(host))
    (host.etc_dir / "qemu-lockd.conf").write_text(configs.qemu_lockd_conf(host, lockspace))
    host.outside(VIRTLOCKD_CONF_PATH).write_text(configs.virtlockd_conf(host))


def in_namespace(host: HostLayout, command: list[str]) -> list[str]:
    """``command`` run inside a new mount namespace with the host's folders mounted over libvirt's paths."""
    binds: list[str] = []
    for private in PRIVATE_PATHS:
        binds += [str(host.outside(private)), str(private)]
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", _MOUNT_AND_EXEC, "sh", *binds, "--", *command,
    ]  # fmt: skip


def libvirtd_argv(host: HostLayout) -> list[str]:
    libvirtd = shutil.which("libvirtd") or "/usr/sbin/libvirtd"
    return in_namespace(host, [libvirtd, "--listen", "--pid-file", str(host.libvirtd_pid_file)])


def virtlockd_argv(host: HostLayout) -> list[str]:
    """virtlockd daemonizes (--daemon): its first process returns once it listens and wrote its pid file."""
    virtlockd = shutil.which("virtlockd") or "/usr/sbin/virtlockd"
    return in_namespace(
        host, [virtlockd, "--daemon", "--config", str(VIRTLOCKD_CONF_PATH), "--pid-file", str(host.virtlockd_pid_file)]
    )


def start_libvirtd(host: HostLayout) -> ProcessRef:
    """The host's virtlockd first (unless it runs), then its libvirtd."""
    ensure_virtlockd(host)
    host.libvirtd_pid_file.unlink(missing_ok=True)
    return processes.spawn_detached(libvirtd_argv(host), host.libvirtd_log)


def virtlockd_process(host: HostLayout) -> ProcessRef | None:
    """The host's virtlockd as its pid file names it: a live virtlockd inside a namespace
    of this host, else None (a stale pid file, or a pid reused by another process)."""
    try:
        pid = int(host.virtlockd_pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    ref = processes.ref_of(pid)
    program = processes.cmdline_of(pid)[:1]
    if ref is None or not program or Path(program[0]).name != "virtlockd" or not processes.sees_mounts_from(pid, host.root):
        return None
    return ref


def ensure_virtlockd(host: HostLayout, timeout: float = READY_TIMEOUT) -> bool:
    """Start the host's virtlockd unless one runs; returns whether it started one.

    One per host, never two: a virtlockd that runs on (after a crash of libvirtd) holds
    the leases of the guests that run on, and a second one would find the pid file taken.
    """
    if virtlockd_process(host) is not None:
        return False
    host.virtlockd_log.parent.mkdir(parents=True, exist_ok=True)
    with open(host.virtlockd_log, "ab") as log:
        try:
            done = subprocess.run(
                virtlockd_argv(host), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise LabError(f"virtlockd of {host.name} did not start within {timeout:.0f} s; see {host.virtlockd_log}.") from None
    if done.returncode != 0 or virtlockd_process(host) is None:
        raise LabError(
            f"virtlockd of {host.name} did not start (exit {done.returncode}); "
            f"see {host.virtlockd_log}: {processes.last_line(host.virtlockd_log)}"
        )
    return True


def stop_virtlockd(host: HostLayout) -> bool:
    """Stop the host's virtlockd (SIGTERM). It ends any guest still holding a lease
    with it, so the host's guests are stopped first. Returns whether it ran."""
    return processes.stop(virtlockd_process(host))


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
