"""Networks as libvirt and Linux describe them: what a domain's interfaces
attach to, a libvirt network's portgroups, and the host's network devices.

Pure, except `read_devices`, which lists /sys/class/net.
"""

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from ferry.proto.network import Attachment, AttachmentKind

# Devices libvirt makes for guests' interfaces; they come and go with VMs and
# are never what another VM attaches to.
GUEST_DEVICE_PREFIXES = ("vnet", "macvtap", "macvlan")
SYS_CLASS_NET = Path("/sys/class/net")


def attachments_of(domain: ET.Element) -> list[Attachment]:
    """What each interface of the domain needs on the host that runs it. Interfaces
    that need nothing named on the host (user networking, a plain tap) are left out."""
    found = []
    for interface in domain.iterfind("./devices/interface"):
        kind = interface.get("type", "")
        source = interface.find("source")
        if source is None:
            continue
        if kind == AttachmentKind.NETWORK and source.get("network"):
            found.append(Attachment(kind, source.get("network", ""), source.get("portgroup", "")))
        elif kind == AttachmentKind.BRIDGE and source.get("bridge"):
            found.append(Attachment(kind, source.get("bridge", "")))
        elif kind == AttachmentKind.DIRECT and source.get("dev"):
            found.append(Attachment(kind, source.get("dev", "")))
    return found


def network_portgroups(network_xml: str) -> list[str]:
    root = ET.fromstring(network_xml)
    return sorted(name for pg in root.iterfind("portgroup") if (name := pg.get("name")))


def host_devices(names: Iterable[str]) -> list[str]:
    """The devices a VM may attach to: all but loopback and guests' own taps."""
    return sorted(n for n in names if n != "lo" and not n.startswith(GUEST_DEVICE_PREFIXES))


def read_devices(root: Path = SYS_CLASS_NET) -> list[str]:
    try:
        return host_devices(os.listdir(root))
    except OSError:
        return []
