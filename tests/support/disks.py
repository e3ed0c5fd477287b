"""Checking what a guest's disk holds after it moved."""

import subprocess
from pathlib import Path

from ferry.lab.lab import Lab
from ferry.lab.libvirt_conn import open_host


def assert_disk_holds(lab: Lab, host: str, guest: str, pattern: Path, image: Path) -> None:
    """Stops the guest on `host` (so nobody writes to the disk), then checks its
    image starts with the bytes of `pattern` and is empty beyond them."""
    with open_host(lab.host(host)) as conn:
        conn.lookupByName(guest).destroy()
    compare = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(pattern), str(image)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert compare.returncode == 0, compare.stdout + compare.stderr
