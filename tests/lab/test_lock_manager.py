"""Never twice: libvirt's lock manager in the lab refuses a second copy of a running
guest on another host, and lets it start there once the first host lost its power.

Every lab host runs virtlockd (`lock_manager = "lockd"`), with indirect leases in
the lab's shared folder (`file_lockspace_dir`): a disk's lease is a file named
after the SHA-256 of the disk's path, locked (fcntl) by the virtlockd of the host
whose guest uses the disk. Real libvirtd, virtlockd and QEMU; the power cut also
runs Ferry's daemons, whose coordinator fences the host that went silent.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt
import pytest

from ferry.lab import hosts
from ferry.lab.guests import create_disk_like
from ferry.lab.lab import Lab, virtlockd_role
from ferry.lab.layout import IMAGES_PATH
from ferry.lab.libvirt_conn import open_host
from tests.lab.test_power import event_of, wait_state
from tests.support.ferry_cli import ferry

pytestmark = pytest.mark.lab

# What QEMU says when another process holds its image lock, and what virtlockd says
# when another virtlockd holds the lease.
QEMU_IMAGE_LOCKED = 'Failed to get "write" lock'
LEASE_LOCKED = "resource busy: Lockspace resource '{}' is locked"


def lease_of(lab: Lab, disk: str) -> Path:
    """The lease file of a disk path as the guest's XML names it (inside the host's namespace)."""
    return lab.layout.lockspace_dir / hashlib.sha256(disk.encode()).hexdigest()


def lease_holder(lease: Path) -> int | None:
    """The pid of the process holding the lease's lock (F_GETLK: nothing is taken), or None.
    virtlockd removes a lease file it releases; a killed one leaves it, unlocked."""
    # struct flock on Linux x86_64: l_type, l_whence, l_start, l_len, l_pid (and padding).
    query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    if not lease.exists():
        return None
    with open(lease, "rb") as file:
        kind, _whence, _start, _length, pid = struct.unpack("hhqqi4x", fcntl.fcntl(file, fcntl.F_GETLK, query))
    return None if kind == fcntl.F_UNLCK else pid


def lock_daemon_pid(lab: Lab, host: str) -> int:
    ref = hosts.virtlockd_process(lab.host(host))
    assert ref is not None, f"{host} has no virtlockd"
    return ref.pid


def persistent_xml(lab: Lab, host: str, guest: str) -> str:
    with open_host(lab.host(host)) as conn:
        return conn.lookupByName(guest).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


@contextmanager
def defined_on(lab: Lab, host: str, xml: str) -> Iterator[libvirt.virDomain]:
    """The guest's XML defined on ``host``; stopped and undefined there afterwards, whatever happened."""
    with open_host(lab.host(host)) as conn:
        dom = conn.defineXML(xml)
        try:
            yield dom
        finally:
            if dom.isActive():
                dom.destroy()
            dom.undefine()


def refusal(lab: Lab, host: str, xml: str) -> libvirt.libvirtError:
    """Define the copy on ``host`` and start it: the libvirt error that refuses it."""
    with defined_on(lab, host, xml) as copy, pytest.raises(libvirt.libvirtError) as refused:
        copy.create()
    return refused.value


def assert_runs_once_on(lab: Lab, guest: str, host: str) -> None:
    where = lab.residency(guest)[guest]
    assert (where.running_on, where.active_on, where.defined_on) == ((host,), (host,), (host,)), where.explain()
    lab.wait_for_tick(guest, host, lab.wait_for_tick(guest, host) + 1)  # and it goes on ticking


def test_a_second_copy_of_a_running_guest_is_refused_by_qemus_image_lock(lab: Lab, guest_factory) -> None:
    guest = guest_factory(host="hv1", disk="shared")
    disk = str(lab.shared_dir / f"{guest}.qcow2")
    lease = lease_of(lab, disk)
    assert lease_holder(lease) == lock_daemon_pid(lab, "hv1"), "hv1's virtlockd holds the disk's lease"

    error = refusal(lab, "hv2", persistent_xml(lab, "hv1", guest))

    # Both hosts see the one image file, so QEMU on hv2 fails to open it, before
    # virtlockd is asked: libvirt takes the leases only when the guest's CPUs start.
    message = error.get_error_message()
    assert QEMU_IMAGE_LOCKED in message and f"Is another process using the image [{disk}]?" in message, message
    assert error.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR
    assert_runs_once_on(lab, guest, "hv1")
    assert lease_holder(lease) == lock_daemon_pid(lab, "hv1")


def test_a_second_copy_that_qemu_lets_open_its_disk_is_refused_by_virtlockd(lab: Lab, guest_factory) -> None:
    guest = guest_factory(host="hv1", disk="local")
    # A local disk has the same path on every host (/var/lib/libvirt/images/NAME.qcow2)
    # but is a file of each host's own: QEMU's image lock (on the file) sees nothing on
    # hv2, as it sees nothing across hosts on RBD; the lease (on the path, in the shared
    # lockspace) is held by hv1's virtlockd, so hv2's virtlockd is what refuses.
    disk = str(IMAGES_PATH / f"{guest}.qcow2")
    create_disk_like(lab.host("hv1").outside(disk), lab.host("hv2").outside(disk))
    lease = lease_of(lab, disk)
    assert lease_holder(lease) == lock_daemon_pid(lab, "hv1")

    error = refusal(lab, "hv2", persistent_xml(lab, "hv1", guest))

    assert error.get_error_message() == LEASE_LOCKED.format(lease.name), error.get_error_message()
    assert (error.get_error_code(), error.get_error_domain()) == (libvirt.VIR_ERR_RESOURCE_BUSY, libvirt.VIR_FROM_LOCKSPACE)
    assert_runs_once_on(lab, guest, "hv1")
    assert lease_holder(lease) == lock_daemon_pid(lab, "hv1")


def test_after_a_power_cut_the_lease_is_free_and_the_guest_starts_on_another_host(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guest = guest_factory(host="hv1", disk="shared")
    lease = lease_of(lab, str(lab.shared_dir / f"{guest}.qcow2"))
    assert lease_holder(lease) == lock_daemon_pid(lab, "hv1")
    xml = persistent_xml(lab, "hv1", guest)
    cut_at = time.time()
    cut = lab.power_off("hv1")
    try:
        assert virtlockd_role(lab.host("hv1")) in cut and lab.powered("hv1") == [], cut
        # The dead host's virtlockd holds nothing any more (on NFS the server frees a dead client's locks).
        assert lease_holder(lease) is None
        with defined_on(lab, "hv2", xml) as copy:
            copy.create()
            assert lease_holder(lease) == lock_daemon_pid(lab, "hv2")
            assert copy.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            lab.wait_for_tick(guest, "hv2", 1)
        assert lease_holder(lease) is None, "hv2 released the lease with its copy"
    finally:
        try:
            # hv1 went silent: the coordinator fences it (fence_lab: off, then a status that says
            # off). Only then may it come back, or the fence would cut it again.
            fenced = event_of(lab, "host_fenced", "hv1", cut_at)
        finally:
            lab.reload()  # fence_lab ran in the coordinator's process
            lab.power_on("hv1")
    assert (fenced["by"], fenced["reason"]) == ("fence_lab", "fence_lab confirms hv1 is off"), fenced
    wait_state(lab, "hv1", "up")
    # Fenced, it stays out of placement until an operator lets it back (the other lab tests need it).
    undrained = ferry(lab, "undrain", "hv1")
    assert undrained.code == 0, undrained.stderr
    assert hosts.virtlockd_process(lab.host("hv1")) is not None, "power_on starts hv1's virtlockd again"
    # After the power cut the guest is defined on hv1 and off, as on a real host; nobody runs it.
    where = lab.residency(guest)[guest]
    assert (where.running_on, where.defined_on) == ((), ("hv1",)), where.explain()
