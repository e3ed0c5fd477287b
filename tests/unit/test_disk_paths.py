"""Where a prepare request may make the destination create, and look for, disks."""

from pathlib import Path, PurePosixPath

import pytest

from ferry.agent.config import AgentConfig
from ferry.agent.disk_paths import (
    copy_target_problem,
    images_folder,
    path_problem,
    resolved_target_problem,
)
from ferry.agent.hypervisor import ImagesFolder

# The lab's shape: the hypervisor names /var/lib/libvirt/images, the agent sees it elsewhere.
LAB = ImagesFolder(host_dir=Path("/srv/lab/hv1/images"), domain_dir=PurePosixPath("/var/lib/libvirt/images"))
IMAGES = "/var/lib/libvirt/images"


@pytest.mark.parametrize(
    "path",
    [
        "/var/lib/libvirt/images/g1.qcow2",
        "/srv/nfs/g1.qcow2",
        "/dev/mapper/san-lun7",  # shared storage on a SAN: checked, never created
        "/var/lib/libvirt/images/g1..qcow2",
        "/var/lib/libvirt/images/with space é.raw",
    ],
)
def test_plain_absolute_paths_are_disk_paths(path):
    assert path_problem(path) is None


@pytest.mark.parametrize(
    "path, problem",
    [
        ("", "a disk path cannot be empty"),
        ("g1.qcow2", "the disk path 'g1.qcow2' is not absolute"),
        ("../etc/shadow", "the disk path '../etc/shadow' is not absolute"),
        ("/var/lib/libvirt/images/../../../etc/shadow", "the disk path '/var/lib/libvirt/images/../../../etc/shadow' is not "
         "written plainly (it has '..', '.', '//' or a trailing '/')"),
        ("/var/lib/libvirt/images/./g1", "the disk path '/var/lib/libvirt/images/./g1' is not "
         "written plainly (it has '..', '.', '//' or a trailing '/')"),
        ("/var/lib/libvirt/images//g1", "the disk path '/var/lib/libvirt/images//g1' is not "
         "written plainly (it has '..', '.', '//' or a trailing '/')"),
        ("//etc/shadow", "the disk path '//etc/shadow' is not written plainly (it has '..', '.', '//' or a trailing '/')"),
        ("/var/lib/libvirt/images/", "the disk path '/var/lib/libvirt/images/' is not "
         "written plainly (it has '..', '.', '//' or a trailing '/')"),
        ("/var/lib/libvirt/images/g1\x00.raw", "the disk path '/var/lib/libvirt/images/g1\\x00.raw' holds a control character"),
        ("/var/lib/libvirt/images/g1\n.raw", "the disk path '/var/lib/libvirt/images/g1\\n.raw' holds a control character"),
        ("/var/lib/libvirt/images/g1\x9b.raw", "the disk path '/var/lib/libvirt/images/g1\\x9b.raw' holds a control character"),
        ("/" + "a" * 4096, "a disk path has at most 4096 characters, not 4097"),
    ],
)
def test_paths_libvirt_would_never_write_are_refused(path, problem):
    assert path_problem(path) == problem


@pytest.mark.parametrize(
    "path",
    [
        "/var/lib/libvirt/images/g1.qcow2",
        "/var/lib/libvirt/images/sub/dir/g1.raw",
    ],
)
def test_images_are_created_inside_the_images_folder(path):
    assert copy_target_problem(path, LAB) is None


@pytest.mark.parametrize(
    "path",
    [
        "/etc/cron.d/ferry",
        "/dev/sda",
        "/root/.ssh/authorized_keys",
        "/srv/nfs/g1.qcow2",  # shared storage elsewhere: checked there, never created
        "/var/lib/libvirt/images2/g1.qcow2",  # a sibling with a longer name is not inside
        "/var/lib/libvirt/g1.qcow2",
        "/srv/lab/hv1/images/g1.qcow2",  # the folder as the agent sees it is not a domain path
        "/var/lib/libvirt/images",  # the folder itself
    ],
)
def test_images_are_never_created_outside_the_images_folder(path):
    assert copy_target_problem(path, LAB) == (
        f"{path} is outside this host's images folder /var/lib/libvirt/images: it creates disks only there"
    )


def test_a_copy_target_must_be_a_plain_path_first():
    assert copy_target_problem("/var/lib/libvirt/images/../../../etc/shadow", LAB) == path_problem(
        "/var/lib/libvirt/images/../../../etc/shadow"
    )


@pytest.mark.parametrize(
    "resolved, allowed",
    [
        ("/srv/lab/hv1/images/g1.qcow2", True),
        ("/srv/lab/hv1/images/sub/g1.qcow2", True),
        ("/etc/cron.d/g1.qcow2", False),  # a symlink in the folder leading to /etc
        ("/srv/lab/hv1/images2/g1.qcow2", False),
        ("/srv/lab/hv1/images", False),  # the folder itself
    ],
)
def test_a_symlink_leading_out_of_the_folder_is_refused(resolved, allowed):
    problem = resolved_target_problem("/var/lib/libvirt/images/g1.qcow2", resolved, "/srv/lab/hv1/images")
    if allowed:
        assert problem is None
    else:
        assert problem == (
            f"/var/lib/libvirt/images/g1.qcow2 leads out of this host's images folder (to {resolved}): "
            "it creates disks only inside it"
        )


def test_the_images_folder_comes_from_the_config():
    lab = AgentConfig(host="hv1", images_dir="/srv/lab/hv1/images", images_dir_in_domain=IMAGES)
    assert images_folder(lab) == LAB
    plain = AgentConfig(host="hv1", images_dir=IMAGES)
    assert images_folder(plain) == ImagesFolder(host_dir=Path(IMAGES), domain_dir=PurePosixPath(IMAGES))
