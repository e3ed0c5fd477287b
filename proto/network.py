"""Networks on both sides of a move: what each interface of a VM needs on the host
that runs it, what a host offers, and the pure judgement of one against the other.

A live migration connects the VM to the same networks on the destination; a
host without them fails inside libvirt, late. Agents report what their host
offers in the heartbeat (placement skips hosts that lack something) and the
destination checks again, live, in prepare (it declines `network_missing`).
"""

import enum

import msgspec


class AttachmentKind(enum.StrEnum):
    NETWORK = "network"  # a libvirt network, optionally one of its portgroups
    BRIDGE = "bridge"  # a bridge device of the host
    DIRECT = "direct"  # macvtap on a host device


class Attachment(msgspec.Struct, frozen=True, gc=False):
    """What one interface of a VM needs. `kind` stays a string on the wire so a
    newer agent's kinds still decode; kinds this code does not know are not judged."""

    kind: str
    source: str
    portgroup: str = ""


class LibvirtNetwork(msgspec.Struct, frozen=True, gc=False):
    name: str
    active: bool = True
    portgroups: list[str] = []


class HostNetworks(msgspec.Struct, frozen=True, gc=False):
    """What a host offers interfaces: its libvirt networks (defined, active or not)
    and its network devices (bridges, and devices for direct attachments; the
    taps libvirt makes for guests are left out)."""

    networks: list[LibvirtNetwork] = []
    devices: list[str] = []


def describe_attachment(need: Attachment) -> str:
    if need.kind == AttachmentKind.NETWORK and need.portgroup:
        return f"network {need.source} (portgroup {need.portgroup})"
    if need.kind == AttachmentKind.DIRECT:
        return f"device {need.source} (direct)"
    return f"{need.kind} {need.source}"


class NetworkOffer:
    """A host's networks and devices by name, built once per report: placement
    asks thousands of hosts about one VM's interfaces."""

    __slots__ = ("devices", "key", "networks")

    def __init__(self, offered: HostNetworks) -> None:
        self.networks = {n.name: n for n in offered.networks}
        self.devices = frozenset(offered.devices)
        # Equal for hosts that offer the same: placement judges a VM's interfaces once per kind of host.
        self.key = (
            frozenset((n.name, n.active, frozenset(n.portgroups)) for n in offered.networks),
            self.devices,
        )


def missing_attachments(needs: list[Attachment] | tuple[Attachment, ...], offered: HostNetworks | NetworkOffer) -> list[str]:
    """One sentence per need the host cannot meet, naming what is missing; [] when it meets all."""
    offer = offered if isinstance(offered, NetworkOffer) else NetworkOffer(offered)
    networks, devices = offer.networks, offer.devices
    problems: list[str] = []
    for need in needs:
        problem = None
        if need.kind == AttachmentKind.NETWORK:
            network = networks.get(need.source)
            if network is None:
                problem = f"no libvirt network {need.source}"
            elif not network.active:
                problem = f"libvirt network {need.source} is defined but not active"
            elif need.portgroup and need.portgroup not in network.portgroups:
                problem = f"libvirt network {need.source} has no portgroup {need.portgroup}"
        elif need.kind == AttachmentKind.BRIDGE:
            if need.source not in devices:
                problem = f"no bridge {need.source}"
        elif need.kind == AttachmentKind.DIRECT:
            if need.source not in devices:
                problem = f"no network device {need.source} (for a direct attachment)"
        if problem is not None and problem not in problems:
            problems.append(problem)
    return problems
