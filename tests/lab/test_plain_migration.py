"""The lab can move a running guest with plain libvirt, and can prove it kept running.

These are the acceptance tests of the lab itself; Ferry's own migrations are
tested against the same fixtures.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ferry.lab.errors import LabError
from ferry.lab.guests import GuestSpec, domain_xml
from ferry.lab.lab import Lab
from ferry.lab.layout import IMAGES_PATH
from ferry.lab.libvirt_conn import open_host
from ferry.lab.plain_migration import MigrationOptions, migrate
from tests.support.disks import assert_disk_holds

pytestmark = pytest.mark.lab

TICKS_ON_DEST = 2


def assert_moved_without_restart(lab: Lab, name: str, source: str, dest: str, ticks_before: int) -> None:
    # The guest must go on counting on the destination, past where it was on the source.
    lab.wait_for_tick(name, dest, ticks_before + TICKS_ON_DEST, timeout=30)
    report = lab.continuity(name)
    assert report.ok, report.explain()
    assert report.hosts_in_order == (source, dest)
    assert report.current_host == dest
    assert len(report.boot_ids) == 1
    where = lab.residency(name)[name]
    assert where.running_on == (dest,), where.explain()
    assert where.active_on == (dest,), where.explain()
    assert where.defined_on == (dest,), where.explain()


def test_live_migration_over_tcp_keeps_the_guest_running(lab: Lab, guest_factory) -> None:
    name = guest_factory(host="hv1", dirty_mb=4)
    ticks_before = lab.wait_for_tick(name, "hv1", 3)

    result = migrate(lab.layout, name, "hv1", "hv2")

    assert result.downtime_ms is not None and result.downtime_ms < 5000
    assert_moved_without_restart(lab, name, "hv1", "hv2", ticks_before)


def test_live_migration_with_tls_keeps_the_guest_running(lab: Lab, guest_factory) -> None:
    name = guest_factory(host="hv2")
    ticks_before = lab.wait_for_tick(name, "hv2", 3)

    migrate(lab.layout, name, "hv2", "hv3", MigrationOptions(tls=True))

    assert_moved_without_restart(lab, name, "hv2", "hv3", ticks_before)


def test_tls_migration_copies_a_local_disk_unchanged(lab: Lab, guest_factory, tmp_path: Path) -> None:
    pattern = tmp_path / "pattern.raw"
    pattern.write_bytes(random.Random(20240603).randbytes(8 << 20))  # seeded: the same bytes every run
    name = guest_factory(host="hv1", disk="local", disk_size_mib=32, disk_content=pattern)
    source_image = lab.host("hv1").outside(IMAGES_PATH / f"{name}.qcow2")
    dest_image = lab.host("hv2").outside(IMAGES_PATH / f"{name}.qcow2")
    assert not dest_image.exists()
    ticks_before = lab.wait_for_tick(name, "hv1", 3)

    migrate(lab.layout, name, "hv1", "hv2", MigrationOptions(tls=True, copy_storage=True))

    assert_moved_without_restart(lab, name, "hv1", "hv2", ticks_before)
    # Same path inside both namespaces, two different files outside.
    assert dest_image.exists() and source_image.exists()
    assert dest_image.stat().st_ino != source_image.stat().st_ino
    assert_disk_holds(lab, "hv2", name, pattern, dest_image)


def test_a_guest_on_the_shared_folder_moves_without_copying_its_disk(lab: Lab, guest_factory) -> None:
    name = guest_factory(host="hv3", disk="shared")
    image = lab.shared_dir / f"{name}.qcow2"
    inode = image.stat().st_ino
    ticks_before = lab.wait_for_tick(name, "hv3", 3)

    # libvirt sees the lab's shared folder as a local filesystem and calls the
    # move unsafe; on real shared storage (NFS, Ceph) no such flag is needed.
    with pytest.raises(LabError, match="unsafe"):
        migrate(lab.layout, name, "hv3", "hv1")
    migrate(lab.layout, name, "hv3", "hv1", MigrationOptions(unsafe=True))

    assert_moved_without_restart(lab, name, "hv3", "hv1", ticks_before)
    assert image.stat().st_ino == inode


def test_the_checker_sees_a_restart_passed_off_as_a_move(lab: Lab, guest_factory) -> None:
    """Guard against a checker that passes everything: stop on hv1, start afresh on hv2."""
    name = guest_factory(host="hv1")
    lab.wait_for_tick(name, "hv1", 3)
    with open_host(lab.host("hv1")) as conn:
        dom = conn.lookupByName(name)
        dom.destroy()
        dom.undefine()
    with open_host(lab.host("hv2")) as conn:
        conn.defineXML(domain_xml(GuestSpec(name, "hv2", memory_mib=128), lab.image(), None)).create()
    lab.wait_for_tick(name, "hv2", 2)

    report = lab.continuity(name)

    assert not report.ok
    assert report.current_host == "hv2"
    assert any("booted 2 times" in problem for problem in report.problems), report.problems
    assert lab.residency(name)[name].running_on == ("hv2",)

