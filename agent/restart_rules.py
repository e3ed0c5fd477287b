"""Which kept domain definitions this agent defines and starts when the
coordinator restarts a VM of a dead host. Pure: XML in, the XML to define or a
sentence (the refusal) out.

The definition comes from the dead host's own reports, through the
coordinator. A live migration already lets a source's libvirtd hand this
host's libvirtd a domain, so the XML is trusted as much as that, and no more
in what it may make this host run:

- it is a `<domain>` of the VM and UUID the request names, without a DOCTYPE
  (libvirt never writes one; entity tricks need one);
- no element in a namespace outside `<metadata>`: `qemu:commandline`,
  `qemu:override` and their kind pass arguments straight to QEMU;
- no `<hostdev>` and no interface `<script>` (a device of the dead host, a
  program run as root here);
- the `<emulator>` is dropped, so libvirt starts this host's own QEMU for the
  domain type;
- every disk, kernel, initrd, loader and nvram path is a plain absolute path
  (agent/disk_paths.py), and no disk lies in this host's own images folder: a VM
  with local disks cannot be restarted anywhere (its disks died with its host).
"""

import xml.etree.ElementTree as ET

from ferry.agent.disk_paths import path_problem
from ferry.agent.hypervisor.disks import ImagesFolder

_OS_PATHS = ("os/kernel", "os/initrd", "os/loader", "os/nvram")


class RestartRefused(Exception):
    """The definition is not started here; the message says why."""


def restart_xml(xml: str, vm: str, uuid: str, images: ImagesFolder) -> str:
    """The XML to define for restarting `vm` here. Raises RestartRefused."""
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise RestartRefused("the definition has a DOCTYPE or entities, which libvirt never writes")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise RestartRefused(f"the definition does not parse: {exc}") from None
    if root.tag != "domain":
        raise RestartRefused(f"the definition is a <{root.tag}>, not a <domain>")
    if (root.findtext("name") or "") != vm:
        raise RestartRefused(f"the definition names the domain {root.findtext('name')!r}, not {vm!r}")
    if (root.findtext("uuid") or "").strip().lower() != uuid.lower():
        raise RestartRefused(f"the definition's UUID is {root.findtext('uuid')!r}, not {uuid!r}")
    _refuse_foreign_elements(root)
    devices = root.find("devices")
    if devices is not None:
        if devices.find("hostdev") is not None or devices.find("interface[@type='hostdev']") is not None:
            raise RestartRefused("the VM has a host device passed through; that device died with its host")
        if devices.find("interface/script") is not None:
            raise RestartRefused("an interface of the VM runs a script; scripts are not run from a kept definition")
        for emulator in devices.findall("emulator"):
            devices.remove(emulator)
        for source in devices.iterfind("disk/source"):
            for attribute in ("file", "dev"):
                path = source.get(attribute)
                if path is not None:
                    _check_path(path, "disk")
                    if images.is_local(path):
                        raise RestartRefused(
                            f"its disk {path} is in this host's own images folder: a VM with local disks cannot be restarted"
                        )
    for where in _OS_PATHS:
        path = root.findtext(where)
        if path:
            _check_path(path.strip(), where.split("/")[1])
    return ET.tostring(root, encoding="unicode")


def disk_paths(xml: str) -> list[str]:
    """The file and block paths of the definition's disks (XML already accepted)."""
    root = ET.fromstring(xml)
    return [
        path
        for source in root.iterfind("devices/disk[@device='disk']/source")
        for path in (source.get("file"), source.get("dev"))
        if path
    ]


def _refuse_foreign_elements(root: ET.Element) -> None:
    for child in root:
        if child.tag == "metadata":
            continue  # other programs' notes about the VM, never read by libvirt
        for element in child.iter():
            if element.tag.startswith("{") or any(name.startswith("{") for name in element.attrib):
                raise RestartRefused(
                    f"the definition has {element.tag!r} outside <metadata>: QEMU pass-through is not started from a "
                    "kept definition"
                )


def _check_path(path: str, what: str) -> None:
    problem = path_problem(path)
    if problem is not None:
        raise RestartRefused(f"its {what} path is refused: {problem}")
