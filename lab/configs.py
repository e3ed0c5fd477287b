"""Text of every config file the lab writes. Pure functions of the layout."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ferry.lab.layout import COORDINATORS, IMAGES_PATH, PKI_PATH, QEMU_TLS_PATH, HostLayout, LabLayout

HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_TIMEOUT = 6.0
# Short, so a probe a test drops into a host's probe folder shows within a second or two.
HEALTH_INTERVAL = 1.0
# /metrics: the daemons' default ports, each daemon on an address of its own inside
# the lab's 127.0.N range (an agent on its host's, the coordinators on .201 and up,
# past any host), so labs and daemons never share a socket and nothing is recorded.
AGENT_METRICS_PORT = 9465
COORDINATOR_METRICS_PORT = 9464
COORDINATOR_METRICS_HOST = 200


def agent_metrics_address(host: HostLayout) -> str:
    return f"{host.address}:{AGENT_METRICS_PORT}"


def coordinator_metrics_address(layout: LabLayout, name: str) -> str:
    return f"{layout.address_base}.{COORDINATOR_METRICS_HOST + 1 + COORDINATORS.index(name)}:{COORDINATOR_METRICS_PORT}"


def _q(value: str) -> str:
    """A quoted string for libvirt's conf syntax and for TOML (both accept JSON's form here)."""
    return json.dumps(value)


def _servers(nats_urls: Sequence[str]) -> str:
    """The `[nats] servers` list: every server of the cluster, so a daemon outlives any one."""
    return "[" + ", ".join(_q(url) for url in nats_urls) + "]"


def libvirtd_conf(host: HostLayout) -> str:
    return f"""\
# Written by ferry-lab for {host.name}; paths are as seen inside its namespace.
# Peers reach it over TLS only (qemu+tls://), each with a certificate from the
# lab's CA that libvirtd checks; no unauthenticated TCP.
listen_tcp = 0
listen_tls = 1
listen_addr = {_q(host.address)}
auth_tls = "none"
auth_unix_rw = "none"
auth_unix_ro = "none"
key_file = {_q(str(PKI_PATH / "serverkey.pem"))}
cert_file = {_q(str(PKI_PATH / "servercert.pem"))}
ca_file = {_q(str(PKI_PATH / "cacert.pem"))}
# Distinct per host: libvirt refuses to migrate to a host with its own UUID.
host_uuid = {_q(host.uuid)}
"""


def qemu_conf(host: HostLayout) -> str:
    return f"""\
# Written by ferry-lab for {host.name}; paths are as seen inside its namespace.
user = "root"
group = "root"
security_driver = "none"
# No systemd and a shared cgroup tree: libvirt must not manage cgroups here.
cgroup_controllers = [ ]
# Without virtlogd, QEMU writes its stdio and file chardevs itself.
stdio_handler = "file"
# Ownership xattrs on the one filesystem all hosts share would confuse each other.
remember_owner = 0
migration_address = {_q(host.address)}
migration_host = {_q(host.address)}
migrate_tls_x509_cert_dir = {_q(str(QEMU_TLS_PATH))}
migrate_tls_x509_verify = 1
# Leases through the host's virtlockd (qemu-lockd.conf): a guest's disks are leased
# when its CPUs start, so a second copy of a running guest is refused on any host.
lock_manager = "lockd"
"""


def qemu_lockd_conf(host: HostLayout, lockspace: Path) -> str:
    """Indirect leases in ``lockspace``, a folder of the lab's shared folder: the lease
    of a disk path is a file named after its SHA-256, locked by the virtlockd of the
    host that runs the guest, so every host sees it (as on an NFS share)."""
    return f"""\
# Written by ferry-lab for {host.name}.
auto_disk_leases = 1
require_lease_for_disks = 1
file_lockspace_dir = {_q(str(lockspace))}
"""


def virtlockd_conf(host: HostLayout) -> str:
    return f"""\
# Written by ferry-lab for {host.name}; read by its virtlockd inside its namespace.
log_outputs = {_q(f"3:file:{host.virtlockd_log}")}
"""


def agent_toml(
    host: HostLayout, nats_urls: Sequence[str], nats_identity: str = "", *, migration: dict[str, object] | None = None
) -> str:
    """``nats_identity``: the [nats] keys of its identity and CA (lab/nats_security.py);
    ``migration``: extra keys for the agent's [migration] table (tests tune limits with it)."""
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in (migration or {}).items())
    return f"""\
# Written by ferry-lab.
host = {_q(host.name)}
heartbeat_interval = {HEARTBEAT_INTERVAL}
# This host's local images as the agent (outside the host's namespace) sees them;
# inside the namespace, and in domain XML, they are under /var/lib/libvirt/images.
images_dir = {_q(str(host.images_dir))}
images_dir_in_domain = {_q(str(IMAGES_PATH))}
# The agent's journal of sessions, per host (the agent creates it).
state_dir = {_q(str(host.state_dir))}
metrics_address = {_q(agent_metrics_address(host))}

[nats]
servers = {_servers(nats_urls)}
{nats_identity}
[hypervisor]
backend = "libvirt"
uri = {_q(host.uri)}
peer_uri = {_q(host.peer_uri)}
migration_address = {_q(host.address)}

[health]
interval = {HEALTH_INTERVAL}
# Per host, so a test can make one host unhealthy by dropping a probe script here.
probe_dir = {_q(str(host.probes_dir))}

[migration]
# The lab's shared folder is a local directory both hosts see; libvirt cannot
# tell it is shared and refuses to migrate its disks without this.
allow_unsafe = true
{extra}"""


def coordinator_toml(
    layout: LabLayout, name: str, nats_urls: Sequence[str], nats_identity: str = "", fence_dir: Path | None = None
) -> str:
    """Coordinator ``name``'s config: the name tells the two apart in the leader lease and the logs.
    `fence_dir`: where fence_lab is installed; each lab host is fenced with it (a lab power cut)."""
    fencing = ""
    if fence_dir is not None:
        fencing = f"\n[fencing]\nagent_dirs = [{_q(str(fence_dir))}]\n" + "".join(
            f'[fencing.devices.{_q(host.name)}]\nagent = "fence_lab"\n'
            f"options = {{ plug = {_q(host.name)}, lab_dir = {_q(str(layout.dir))} }}\n"
            "run_timeout = 60\npower_timeout = 30\nstatus_every = 0.5\n"
            for host in layout.hosts
        )
    return f"""\
# Written by ferry-lab for the lab in {layout.dir}.
name = {_q(name)}
heartbeat_timeout = {HEARTBEAT_TIMEOUT}
metrics_address = {_q(coordinator_metrics_address(layout, name))}

[nats]
servers = {_servers(nats_urls)}
{nats_identity}{fencing}"""
