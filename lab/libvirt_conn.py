"""Connections from this process to a lab host's libvirtd.

The lab is test tooling, so it uses libvirt-python directly; the product keeps
libvirt behind the agent's hypervisor adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import libvirt

from ferry.lab.errors import LabError
from ferry.lab.layout import HostLayout

_quiet = False


def quiet_libvirt() -> None:
    """libvirt-python prints every error to stderr by default; the lab reports its own sentences."""
    global _quiet
    if not _quiet:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _quiet = True


@contextmanager
def open_host(host: HostLayout) -> Iterator[libvirt.virConnect]:
    quiet_libvirt()
    try:
        conn = libvirt.open(host.uri)
    except libvirt.libvirtError as error:
        raise LabError(
            f"Cannot reach libvirtd of {host.name} at {host.socket} (is the lab up? `ferry-lab up` starts it): "
            f"{error.get_error_message()}."
        ) from None
    try:
        yield conn
    finally:
        conn.close()
