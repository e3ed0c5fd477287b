"""Where everything of a lab lives: folders, addresses, URIs. Pure, no I/O.

Each host's libvirtd runs in its own mount namespace in which per-host folders
are bind-mounted over the standard libvirt paths. So a path such as
``/var/lib/libvirt/images/web-1.qcow2`` is the same string on every host but a
different file on each, exactly like on real separate machines (storage copy
needs that: the destination image must sit at the source's path). Outside the
namespaces, the same file is ``DIR/<host>/var/lib/libvirt/images/web-1.qcow2``.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ferry.lab.errors import LabError

DEFAULT_DIR = Path("/var/tmp/ferry-lab")
# The guest image is shared by all labs on the machine: building it downloads a kernel.
DEFAULT_CACHE_DIR = Path("/var/cache/ferry-lab")
DEFAULT_ADDRESS_BASE = "127.0.10"
DEFAULT_HOSTS = 3
STATE_FILE_NAME = "lab.json"
MAX_HOSTS = 50
# The production shape: three clustered nats-servers (JetStream R3) and two
# coordinators (a leader and a standby).
NATS_SERVERS = ("n1", "n2", "n3")
COORDINATORS = ("c1", "c2")

# Folders each libvirtd gets for itself (bind-mounted from DIR/<host><path>).
PRIVATE_PATHS: tuple[PurePosixPath, ...] = tuple(
    PurePosixPath(p)
    for p in ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt", "/etc/libvirt")
)
# Paths as seen inside every host's namespace: the same string, a per-host file.
IMAGES_PATH = PurePosixPath("/var/lib/libvirt/images")
CONSOLE_PATH = PurePosixPath("/var/log/libvirt/console")
QEMU_PIDS_PATH = PurePosixPath("/run/libvirt/qemu")
# libvirt TLS (server files and the client pkipath) and QEMU migration TLS.
PKI_PATH = PurePosixPath("/etc/libvirt/pki")
QEMU_TLS_PATH = PKI_PATH / "qemu"
SOCKET_PATH = PurePosixPath("/run/libvirt/libvirt-sock")


def host_name(index: int) -> str:
    return f"hv{index}"


@dataclass(frozen=True)
class HostLayout:
    """One lab hypervisor: its name, address and folders."""

    name: str
    index: int
    address: str
    root: Path  # DIR/<name>: holds the bind-mount sources and the host's own files
    uuid: str

    def outside(self, inside: PurePosixPath | str) -> Path:
        """The path, seen from outside the namespaces, of a path inside this host."""
        inside = PurePosixPath(inside)
        for private in PRIVATE_PATHS:
            if inside == private or private in inside.parents:
                return self.root / inside.relative_to("/")
        return Path(inside)  # not private: the same file on every host

    @property
    def socket(self) -> Path:
        return self.outside(SOCKET_PATH)

    @property
    def uri(self) -> str:
        """How a local process (agent, tests) reaches this host's libvirtd."""
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def peer_uri(self) -> str:
        """How another host's libvirtd reaches this one (peer-to-peer migration, TLS).

        ``pkipath`` is read by the *connecting* libvirtd inside its own namespace,
        where /etc/libvirt/pki holds that host's client certificate.
        """
        return f"qemu+tls://{self.address}/system?pkipath={PKI_PATH}"

    @property
    def peer_uri_tcp(self) -> str:
        """Plain TCP (auth none) to this libvirtd, for comparisons without TLS."""
        return f"qemu+tcp://{self.address}/system"

    @property
    def images_dir(self) -> Path:
        return self.outside(IMAGES_PATH)

    @property
    def console_dir(self) -> Path:
        return self.outside(CONSOLE_PATH)

    def console_log(self, guest: str) -> Path:
        return self.console_dir / f"{guest}.log"

    @property
    def pki_dir(self) -> Path:
        return self.outside(PKI_PATH)

    @property
    def qemu_tls_dir(self) -> Path:
        return self.outside(QEMU_TLS_PATH)

    @property
    def qemu_pids_dir(self) -> Path:
        return self.outside(QEMU_PIDS_PATH)

    @property
    def etc_dir(self) -> Path:
        return self.outside("/etc/libvirt")

    @property
    def libvirtd_pid_file(self) -> Path:
        return self.root / "libvirtd.pid"

    @property
    def libvirtd_log(self) -> Path:
        return self.root / "libvirtd.log"

    @property
    def virtlockd_pid_file(self) -> Path:
        """virtlockd's own pid file (its default, /run/virtlockd.pid, would be shared by all hosts)."""
        return self.root / "virtlockd.pid"

    @property
    def virtlockd_log(self) -> Path:
        return self.root / "virtlockd.log"

    @property
    def probes_dir(self) -> Path:
        """The agent's health probe folder (its /etc/ferry/probes.d); tests drop scripts here.

        The agent runs outside the host's namespace, so this is a plain per-host
        folder, not a bind mount.
        """
        return self.root / "etc" / "ferry" / "probes.d"

    @property
    def state_dir(self) -> Path:
        """The agent's journal of sessions (its /var/lib/ferry/agent): a plain per-host
        folder like the probe folder, so a restarted lab agent finds its own."""
        return self.root / "var" / "lib" / "ferry" / "agent"

    @property
    def agent_config(self) -> Path:
        return self.root / "agent.toml"

    @property
    def agent_log(self) -> Path:
        return self.root / "agent.log"


@dataclass(frozen=True)
class LabLayout:
    dir: Path
    address_base: str
    hosts: tuple[HostLayout, ...]
    cache_dir: Path

    @classmethod
    def build(
        cls,
        dir: Path = DEFAULT_DIR,
        hosts: int = DEFAULT_HOSTS,
        address_base: str = DEFAULT_ADDRESS_BASE,
        cache_dir: Path = DEFAULT_CACHE_DIR,
    ) -> LabLayout:
        check_address_base(address_base)
        if not 1 <= hosts <= MAX_HOSTS:
            raise LabError(f"A lab has 1 to {MAX_HOSTS} hosts, not {hosts}.")
        dir = Path(dir).absolute()
        return cls(
            dir=dir,
            address_base=address_base,
            hosts=tuple(
                HostLayout(
                    name=host_name(i),
                    index=i,
                    address=f"{address_base}.{i}",
                    root=dir / host_name(i),
                    # Stable per lab folder and host, distinct, and never all one digit
                    # (libvirt rejects such UUIDs and refuses to migrate between equal ones).
                    uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"ferry-lab:{dir}:{host_name(i)}")),
                )
                for i in range(1, hosts + 1)
            ),
            cache_dir=Path(cache_dir).absolute(),
        )

    def host(self, name: str) -> HostLayout:
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"The lab has no host {name!r}; its hosts are {', '.join(h.name for h in self.hosts)}.")

    @property
    def shared_dir(self) -> Path:
        """The lab's shared storage: one folder, the same path on every host."""
        return self.dir / "shared"

    @property
    def lockspace_dir(self) -> Path:
        """libvirt's lock manager keeps its leases here, on the shared folder every host's
        virtlockd sees (`file_lockspace_dir`): a disk path leased on one host is leased on all."""
        return self.shared_dir / "lockspace"

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE_NAME

    @property
    def ca_dir(self) -> Path:
        return self.dir / "ca"

    @property
    def nats_dir(self) -> Path:
        return self.dir / "nats"

    @property
    def nats_security_dir(self) -> Path:
        """The NATS CA and server certificate, and every identity (lab/nats_security.py)."""
        return self.dir / "nats-security"

    def nats_store_dir(self, name: str) -> Path:
        """Server ``name``'s own JetStream store: kept across its restarts."""
        return self.nats_dir / name

    def nats_config(self, name: str) -> Path:
        return self.dir / f"nats-{name}.conf"

    def nats_log(self, name: str) -> Path:
        return self.dir / f"nats-{name}.log"

    def coordinator_config(self, name: str) -> Path:
        return self.dir / f"coordinator-{name}.toml"

    def coordinator_log(self, name: str) -> Path:
        return self.dir / f"coordinator-{name}.log"


def check_address_base(address_base: str) -> None:
    """The base is three octets inside 127.0.0.0/8 (all of it answers on loopback)."""
    try:
        first = ipaddress.IPv4Address(f"{address_base}.1")
    except ValueError:
        raise LabError(f"The address base {address_base!r} is not three octets such as 127.0.10.") from None
    if address_base.count(".") != 2 or not first.is_loopback:
        raise LabError(f"The address base {address_base!r} must be three octets inside 127.0.0.0/8, such as 127.0.10.")
