"""Where does a guest run? Asks every lab host's libvirtd, all at once.

The house invariant is that a VM runs in exactly one place. During a live
migration the destination holds a paused incoming copy, so "runs" means the
domain is in the running state; other active states are reported separately.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import libvirt

from ferry.lab.errors import LabError
from ferry.lab.hosts import qemu_processes
from ferry.lab.layout import HostLayout, LabLayout
from ferry.lab.libvirt_conn import open_host


@dataclass(frozen=True)
class Residency:
    guest: str
    running_on: tuple[str, ...]  # hosts where the domain is running
    active_on: tuple[str, ...]  # hosts where it is active in any state (running, paused, ...)
    defined_on: tuple[str, ...]  # hosts with a persistent definition

    @property
    def single_host(self) -> str | None:
        return self.running_on[0] if len(self.running_on) == 1 else None

    def explain(self) -> str:
        return (
            f"{self.guest} runs on {list(self.running_on)}, is active on {list(self.active_on)}, "
            f"is defined on {list(self.defined_on)}"
        )


def _host_view(host: HostLayout, guests: list[str]) -> dict[str, tuple[bool, bool, bool]]:
    """guest -> (running, active, persistent) as this host sees it. A host without
    libvirtd and without QEMU processes (powered off) holds nothing; a libvirtd that
    does not answer while QEMUs run is an error: they might run a guest."""
    view: dict[str, tuple[bool, bool, bool]] = {}
    with ExitStack() as stack:
        try:
            conn = stack.enter_context(open_host(host))
        except LabError:
            if not qemu_processes(host):
                return view
            raise
        for name in guests:
            try:
                dom = conn.lookupByName(name)
                state, _reason = dom.state()
                view[name] = (state == libvirt.VIR_DOMAIN_RUNNING, bool(dom.isActive()), bool(dom.isPersistent()))
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise LabError(f"{host.name} could not say whether it runs {name}: {error.get_error_message()}.") from None
    return view


def residency(layout: LabLayout, guests: Iterable[str]) -> dict[str, Residency]:
    names = list(guests)
    with ThreadPoolExecutor(max_workers=len(layout.hosts)) as pool:
        views = dict(zip((h.name for h in layout.hosts), pool.map(lambda h: _host_view(h, names), layout.hosts)))
    result = {}
    for name in names:
        seen = [(host, flags) for host, view in views.items() if (flags := view.get(name)) is not None]
        result[name] = Residency(
            guest=name,
            running_on=tuple(host for host, (running, _, _) in seen if running),
            active_on=tuple(host for host, (_, active, _) in seen if active),
            defined_on=tuple(host for host, (_, _, persistent) in seen if persistent),
        )
    return result


def single_residency_problems(layout: LabLayout, guests: Iterable[str]) -> list[str]:
    """Sentences for every guest that does not run on exactly one host (empty: all fine)."""
    return [r.explain() for r in residency(layout, guests).values() if r.single_host is None]


async def residency_async(layout: LabLayout, guests: Iterable[str]) -> dict[str, Residency]:
    """For asyncio callers: libvirt calls block, so they run in a thread."""
    return await asyncio.to_thread(residency, layout, list(guests))
