from pathlib import Path, PurePosixPath

import pytest

from ferry.agent.hypervisor import DiskError, ImagesFolder

# The lab's shape: the hypervisor names /var/lib/libvirt/images, the agent sees it elsewhere.
LAB = ImagesFolder(host_dir=Path("/srv/lab/hv1/images"), domain_dir=PurePosixPath("/var/lib/libvirt/images"))
SAME = ImagesFolder(host_dir=Path("/var/lib/libvirt/images"), domain_dir=PurePosixPath("/var/lib/libvirt/images"))


@pytest.mark.parametrize(
    "domain_path, local",
    [
        ("/var/lib/libvirt/images/g1.qcow2", True),
        ("/var/lib/libvirt/images/sub/dir/g1.raw", True),
        ("/var/lib/libvirt/images/", True),
        ("/var/lib/libvirt/images2/g1.qcow2", False),  # a sibling with a longer name is not inside
        ("/var/lib/libvirt/g1.qcow2", False),
        ("/srv/nfs/g1.qcow2", False),
        ("var/lib/libvirt/images/g1.qcow2", False),  # relative
        ("", False),
    ],
)
def test_is_local_means_inside_the_images_folder_as_the_domain_names_it(domain_path, local):
    assert LAB.is_local(domain_path) is local


@pytest.mark.parametrize(
    "domain_path, host_path",
    [
        ("/var/lib/libvirt/images/g1.qcow2", "/srv/lab/hv1/images/g1.qcow2"),
        ("/var/lib/libvirt/images/sub/g1.raw", "/srv/lab/hv1/images/sub/g1.raw"),
        ("/var/lib/libvirt/images//sub/./g1.raw", "/srv/lab/hv1/images/sub/g1.raw"),
    ],
)
def test_a_local_disk_maps_into_the_agents_folder(domain_path, host_path):
    assert LAB.host_path(domain_path) == Path(host_path)


def test_a_disk_elsewhere_keeps_its_path():
    assert LAB.host_path("/srv/nfs/g1.qcow2") == Path("/srv/nfs/g1.qcow2")


def test_when_both_folders_are_the_same_the_path_is_unchanged():
    assert SAME.host_path("/var/lib/libvirt/images/g1.qcow2") == Path("/var/lib/libvirt/images/g1.qcow2")


@pytest.mark.parametrize(
    "domain_path",
    [
        "/var/lib/libvirt/images/../../../etc/shadow",
        "/var/lib/libvirt/images/sub/../../g1.qcow2",
        "/var/lib/libvirt/images/..",
    ],
)
def test_a_path_climbing_out_of_the_images_folder_is_refused(domain_path):
    with pytest.raises(DiskError) as info:
        LAB.host_path(domain_path)
    assert str(info.value) == f"{domain_path} leaves the images folder /var/lib/libvirt/images"


def test_a_dotdot_inside_a_file_name_is_not_climbing():
    assert LAB.host_path("/var/lib/libvirt/images/g1..qcow2") == Path("/srv/lab/hv1/images/g1..qcow2")
