"""`prepare` creates disks only in the agent's images folder and refuses forged
disk paths with `bad_request`, before it reserves or creates anything."""

import os
from pathlib import Path, PurePosixPath

import pytest

from ferry.agent.config import AgentConfig
from ferry.agent.destination import Destination
from ferry.agent.hypervisor import ImagesFolder
from ferry.agent.journal import Journal
from ferry.proto.agent import Decline, DeclineCode, DiskInfo, Offer, PrepareRequest, VmDescription
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import Versions
from ferry.proto.session import MigrateOptions, StorageMode
from tests.support.fake_hypervisor import FakeHypervisor

DOMAIN_IMAGES = "/var/lib/libvirt/images"


class Unreachable(FakeHypervisor):
    """Reaches no shared storage: every disk not copied is missing here."""

    async def storage_problem(self, disk: DiskInfo) -> str | None:
        return f"{disk.path} ({disk.target}) is not reachable here"


@pytest.fixture
def images(tmp_path) -> ImagesFolder:
    folder = tmp_path / "images"
    folder.mkdir()
    return ImagesFolder(host_dir=folder, domain_dir=PurePosixPath(DOMAIN_IMAGES))


@pytest.fixture
async def journal(tmp_path) -> Journal:
    j = Journal(tmp_path / "state")
    await j.open()
    return j


def destination(tmp_path, journal, images, hv=None) -> tuple[Destination, FakeHypervisor]:
    hv = hv or FakeHypervisor()
    config = AgentConfig(host="hv2", images_dir=str(images.host_dir), images_dir_in_domain=DOMAIN_IMAGES)
    return Destination(config, hv, lambda: 1000.0, journal, images=images), hv


def request(*paths: str, storage: StorageMode = StorageMode.COPY, local: bool = True) -> PrepareRequest:
    disks = [DiskInfo(target=f"vd{chr(97 + i)}", path=path, local=local) for i, path in enumerate(paths)]
    return PrepareRequest(
        session_id="sess01",
        vm=VmDescription(name="web", uuid="u", vcpus=1, memory_mib=512, arch="x86_64", disks=disks),
        source="hv1", source_versions=Versions(), options=MigrateOptions(storage=storage),
    )


async def refused(dest: Destination, req: PrepareRequest) -> FerryError:
    with pytest.raises(FerryError) as caught:
        await dest.prepare(req)
    return caught.value


async def test_disks_inside_the_images_folder_are_created(tmp_path, journal, images):
    dest, hv = destination(tmp_path, journal, images)
    offer = await dest.prepare(request(f"{DOMAIN_IMAGES}/web.qcow2", f"{DOMAIN_IMAGES}/sub/web-b.raw"))
    assert isinstance(offer, Offer) and offer.copy_disks == ["vda", "vdb"]
    assert hv.images == {f"{DOMAIN_IMAGES}/web.qcow2", f"{DOMAIN_IMAGES}/sub/web-b.raw"}


@pytest.mark.parametrize("path", ["/etc/cron.d/ferry", "/dev/sda", "/srv/nfs/web.qcow2", "/var/lib/libvirt/images2/x"])
async def test_a_disk_to_copy_outside_the_images_folder_is_a_bad_request(tmp_path, journal, images, path):
    dest, hv = destination(tmp_path, journal, images)
    error = await refused(dest, request(f"{DOMAIN_IMAGES}/ok.qcow2", path))
    assert error.code == ErrorCode.BAD_REQUEST
    assert error.message == (
        f"hv2 will not prepare web's disks: {path} is outside this host's images folder {DOMAIN_IMAGES}: "
        "it creates disks only there"
    )
    assert hv.images == set() and dest.reservations.get("sess01") is None
    assert await journal.load() == []


@pytest.mark.parametrize(
    "path", [f"{DOMAIN_IMAGES}/../../../etc/shadow", "web.qcow2", f"{DOMAIN_IMAGES}/a\x00b", ""]
)
@pytest.mark.parametrize("storage", [StorageMode.COPY, StorageMode.SHARED, StorageMode.AUTO])
async def test_a_path_that_is_not_plain_is_a_bad_request_in_any_storage_mode(tmp_path, journal, images, path, storage):
    dest, hv = destination(tmp_path, journal, images)
    error = await refused(dest, request(path, storage=storage))
    assert error.code == ErrorCode.BAD_REQUEST and error.message.startswith("hv2 will not prepare web: ")
    assert hv.images == set()


async def test_a_symlink_in_the_images_folder_leading_out_is_a_bad_request(tmp_path, journal, images):
    outside = tmp_path / "etc"
    outside.mkdir()
    os.symlink(outside, images.host_dir / "escape")
    dest, hv = destination(tmp_path, journal, images)
    error = await refused(dest, request(f"{DOMAIN_IMAGES}/escape/cron.qcow2"))
    assert error.code == ErrorCode.BAD_REQUEST
    assert error.message == (
        f"hv2 will not prepare web's disks: {DOMAIN_IMAGES}/escape/cron.qcow2 leads out of this host's images folder "
        f"(to {outside.resolve()}/cron.qcow2): it creates disks only inside it"
    )
    assert hv.images == set()


async def test_a_dangling_symlink_leading_out_is_refused_too(tmp_path, journal, images):
    os.symlink(tmp_path / "nowhere" / "file", images.host_dir / "web.qcow2")
    dest, _ = destination(tmp_path, journal, images)
    assert (await refused(dest, request(f"{DOMAIN_IMAGES}/web.qcow2"))).code == ErrorCode.BAD_REQUEST


async def test_a_symlink_staying_inside_the_folder_is_fine(tmp_path, journal, images):
    (images.host_dir / "real").mkdir()
    os.symlink(images.host_dir / "real", images.host_dir / "alias")
    dest, _ = destination(tmp_path, journal, images)
    assert isinstance(await dest.prepare(request(f"{DOMAIN_IMAGES}/alias/web.qcow2")), Offer)


async def test_shared_disks_elsewhere_are_only_looked_for(tmp_path, journal, images):
    dest, hv = destination(tmp_path, journal, images)
    offer = await dest.prepare(request("/srv/nfs/web.qcow2", "/dev/mapper/san-lun7", storage=StorageMode.SHARED, local=False))
    assert isinstance(offer, Offer) and offer.copy_disks == [] and hv.images == set()


async def test_an_unreachable_disk_outside_the_folder_is_declined_not_created(tmp_path, journal, images):
    dest, hv = destination(tmp_path, journal, images, Unreachable())
    reply = await dest.prepare(request("/srv/nfs/web.qcow2", storage=StorageMode.AUTO, local=False))
    assert isinstance(reply, Decline) and reply.code == DeclineCode.STORAGE_UNREACHABLE
    assert reply.reason == (
        "hv2 cannot reach web's disks: /srv/nfs/web.qcow2 (vda) is not reachable here, and /srv/nfs/web.qcow2 is "
        f"outside this host's images folder {DOMAIN_IMAGES}: it creates disks only there"
    )
    assert hv.images == set()


async def test_an_unreachable_disk_inside_the_folder_is_still_copied(tmp_path, journal, images):
    dest, hv = destination(tmp_path, journal, images, Unreachable())
    offer = await dest.prepare(request(f"{DOMAIN_IMAGES}/web.qcow2", storage=StorageMode.AUTO, local=False))
    assert isinstance(offer, Offer) and offer.copy_disks == ["vda"]


def test_the_agent_confines_its_destination_to_its_images_folder(tmp_path):
    from ferry.agent.daemon import Agent

    config = AgentConfig(host="hv2", images_dir=str(tmp_path), state_dir=str(tmp_path / "state"))
    agent = Agent(config, FakeHypervisor())
    assert agent._destination._images == ImagesFolder(host_dir=Path(tmp_path), domain_dir=PurePosixPath(str(tmp_path)))
