"""The lab's libvirt network that only some hosts define: `prod`.

A live migration must find the VM's networks on the destination; the lab shows
it with one libvirt network, `prod`, on the hosts of odd number (hv1, hv3, ...)
and not on the others. It is isolated (no forwarding, no addresses, so no
dnsmasq and no firewall rules): a bridge per host that guests' taps join.

All lab hosts share the machine's network namespace, so each host's network
gets a bridge of its own name (`flb<third octet>-<host number>`, at most 15
characters as Linux requires); the network's name is the same everywhere, as
on real hosts.
"""

from __future__ import annotations

import subprocess
from xml.sax.saxutils import quoteattr

import libvirt

from ferry.lab.errors import LabError
from ferry.lab.layout import HostLayout, LabLayout
from ferry.lab.libvirt_conn import open_host

LAB_NETWORK = "prod"


def defines_lab_network(host: HostLayout) -> bool:
    return host.index % 2 == 1


def network_hosts(layout: LabLayout) -> list[HostLayout]:
    return [h for h in layout.hosts if defines_lab_network(h)]


def bridge_name(host: HostLayout) -> str:
    return f"flb{host.address.split('.')[2]}-{host.index}"


def network_xml(host: HostLayout) -> str:
    return f"""\
<network>
  <name>{LAB_NETWORK}</name>
  <bridge name={quoteattr(bridge_name(host))} stp='off' delay='0'/>
</network>
"""


def start_lab_network(host: HostLayout) -> bool:
    """Define and start `prod` on a host that has it; True when it was not running before."""
    if not defines_lab_network(host):
        return False
    with open_host(host) as conn:
        try:
            net = conn.networkLookupByName(LAB_NETWORK)
        except libvirt.libvirtError:
            remove_bridge(host)  # left by a lab that was killed, not stopped
            try:
                net = conn.networkDefineXML(network_xml(host))
            except libvirt.libvirtError as error:
                raise LabError(f"{host.name} refused to define the network {LAB_NETWORK}: {error.get_error_message()}.") from None
        if net.isActive():
            return False
        try:
            net.create()
        except libvirt.libvirtError as error:
            raise LabError(f"{host.name} could not start the network {LAB_NETWORK}: {error.get_error_message()}.") from None
        return True


def stop_lab_network(host: HostLayout) -> bool:
    """Stop `prod` on the host (its bridge goes with it); True when it was running."""
    if not defines_lab_network(host):
        return False
    stopped = False
    try:
        with open_host(host) as conn:
            try:
                net = conn.networkLookupByName(LAB_NETWORK)
            except libvirt.libvirtError:
                net = None
            if net is not None and net.isActive():
                net.destroy()
                stopped = True
    except LabError:
        pass  # libvirtd is gone: remove the bridge by hand below
    return remove_bridge(host) or stopped


def remove_bridge(host: HostLayout) -> bool:
    """Delete the host's bridge if it is still there; True when it was."""
    found = subprocess.run(["ip", "link", "show", bridge_name(host)], capture_output=True).returncode == 0
    if found:
        subprocess.run(["ip", "link", "delete", bridge_name(host)], capture_output=True)
    return found
