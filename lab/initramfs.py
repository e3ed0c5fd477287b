"""The guest's initramfs: busybox and an /init that ticks. Pure, no I/O.

The archive is written here rather than with the cpio tool so it can hold
/dev/console (the kernel opens it for /init before devtmpfs is mounted)
without creating device nodes on the machine, and so its bytes depend only on
its inputs.
"""

from __future__ import annotations

import gzip
import io
import stat
from dataclasses import dataclass

# Lines the guest prints on ttyS0, parsed by lab.continuity:
#   ferry-boot <boot-id> dirty_mb=<N> fill_mb=<M>
#   ferry-tick <counter> <uptime-seconds> <boot-id>
INIT_SCRIPT = """\
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
dirty_mb=0
fill_mb=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        ferry.dirty_mb=*) dirty_mb="${arg#ferry.dirty_mb=}" ;;
        ferry.fill_mb=*) fill_mb="${arg#ferry.fill_mb=}" ;;
    esac
done
mkdir -p /scratch
mount -t tmpfs -o size=$((dirty_mb + fill_mb + 4))m tmpfs /scratch
# A fresh id per boot: a restarted guest can never pass for the old one.
boot=$(cut -c1-8 /proc/sys/kernel/random/boot_id)
echo "ferry-boot $boot dirty_mb=$dirty_mb fill_mb=$fill_mb" >/dev/ttyS0
if [ "$fill_mb" -gt 0 ]; then
    # Written once, before the first tick: memory a migration must copy while the
    # guest stays idle (no page is dirtied again).
    dd if=/dev/urandom of=/scratch/fill bs=1M count="$fill_mb" 2>/dev/null
fi
if [ "$dirty_mb" -gt 0 ]; then
    # Rewrite N MiB of tmpfs (guest memory) each second: a memory-dirtying workload.
    (
        while :; do
            sleep 1 &
            dd if=/dev/urandom of=/scratch/dirty bs=1M count="$dirty_mb" conv=notrunc 2>/dev/null
            wait $!
        done
    ) &
fi
n=0
while :; do
    n=$((n + 1))
    read up _ </proc/uptime
    echo "ferry-tick $n $up $boot" >/dev/ttyS0
    sleep 1
done
"""

# busybox applets the init script calls (sh runs the script itself).
APPLETS = ("sh", "mount", "mkdir", "cat", "cut", "dd", "sleep")


@dataclass(frozen=True)
class Entry:
    name: str  # path in the archive, without a leading slash
    mode: int  # file type and permission bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def newc_archive(entries: list[Entry]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks as initramfs."""
    out = io.BytesIO()
    for ino, entry in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = entry.name.encode() + b"\0"
        fields = (
            ino, entry.mode, 0, 0,  # inode, mode, uid, gid
            2 if stat.S_ISDIR(entry.mode) else 1,  # nlink
            0, len(entry.data),  # mtime, filesize
            0, 0, entry.rdev[0], entry.rdev[1],  # dev major/minor, rdev major/minor
            len(name), 0,  # namesize, check
        )  # fmt: skip
        out.write(b"070701" + b"".join(b"%08X" % field for field in fields))
        out.write(name)
        _pad(out)
        out.write(entry.data)
        _pad(out)
    return out.getvalue()


def _pad(out: io.BytesIO) -> None:
    out.write(b"\0" * (-out.tell() % 4))


def guest_initramfs(busybox: bytes, init_script: str = INIT_SCRIPT) -> bytes:
    """gzip'd newc archive: /init, static busybox, applet links, /dev/console."""
    entries = [Entry(d, stat.S_IFDIR | 0o755) for d in ("bin", "dev", "proc", "sys", "scratch")]
    entries.append(Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(Entry("bin/busybox", stat.S_IFREG | 0o755, busybox))
    entries += [Entry(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox") for applet in APPLETS]
    entries.append(Entry("init", stat.S_IFREG | 0o755, init_script.encode()))
    return gzip.compress(newc_archive(entries), mtime=0)
