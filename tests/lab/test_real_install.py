"""Ready for a real install, on real libvirtd + QEMU guests in the lab: any VM name
works end to end, a VM moves only to a host that has its networks, and the lab
runs a QEMU and libvirt that do not lose TCG guests' writes."""

from __future__ import annotations

import json
import re

import pytest

from ferry.lab.lab import Lab
from ferry.lab.networks import LAB_NETWORK, network_hosts
from ferry.proto.host import version_tuple
from ferry.proto.session import SessionState
from tests.lab.test_drain import undrain_when_healthy
from tests.support.ferry_cli import ferry
from tests.support.guests import assert_moved_intact, assert_runs_only_on, client_for
from tests.support.waiting import eventually

pytestmark = pytest.mark.lab


async def reported_running(client, host: str, names: list[str]):
    view = next((h for h in (await client.hosts()).hosts if h.host == host), None)
    running = {vm.name for vm in view.vms if vm.state == "running"} if view else set()
    return view if set(names) <= running else None


async def test_the_lab_runs_qemu_9_and_libvirt_10_or_newer(lab_with_ferry: Lab) -> None:
    client = await client_for(lab_with_ferry)
    try:
        async def all_reported():
            hosts = (await client.hosts()).hosts
            return hosts if len(hosts) == len(lab_with_ferry.hosts) and all(h.versions.qemu for h in hosts) else None

        for host in await eventually(all_reported, timeout=30, what="every agent's versions"):
            assert version_tuple(host.versions.qemu) >= (9, 0, 0), f"{host.host} runs QEMU {host.versions.qemu}"
            assert version_tuple(host.versions.libvirt) >= (10, 0, 0), f"{host.host} runs libvirt {host.versions.libvirt}"
    finally:
        await client.close()


async def test_vm_names_with_dots_are_listed_moved_and_drained(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    names = ["web.prod-1.example.com", "ubuntu22.04"]
    for name in names:
        guest_factory(host="hv1", memory_mib=128, dirty_mb=4, name=name)
    client = await client_for(lab)
    try:
        await eventually(lambda: reported_running(client, "hv1", names), timeout=20, what="hv1 reporting both guests")
        shown = ferry(lab, "hosts")
        assert shown.code == 0 and re.search(r"^hv1\s+up\s", shown.stdout, re.M), shown.stdout + shown.stderr
        listed = ferry(lab, "hosts", "--json", "--vms")
        (hv1,) = [h for h in json.loads(listed.stdout)["hosts"] if h["host"] == "hv1"]
        assert set(names) <= {vm["name"] for vm in hv1["vms"]} and hv1["state"] == "up" and not hv1["vm_problems"]

        moved = ferry(lab, "migrate", "ubuntu22.04", "--wait", "--json")
        assert moved.code == 0, moved.stderr
        session = moved.session()
        assert session.vm == "ubuntu22.04" and session.state == SessionState.COMPLETED
        assert_moved_intact(lab, "ubuntu22.04", session.dest)

        drained = ferry(lab, "drain", "hv1", "--wait")
        assert drained.code == 0, drained.stdout + drained.stderr
        (drain,) = await client.drains("hv1")
        item = next(i for i in drain.items if i.vm == "web.prod-1.example.com")
        assert item.state == "moved" and item.dest in ("hv2", "hv3")
        assert_moved_intact(lab, "web.prod-1.example.com", item.dest)
        assert_runs_only_on(lab, "ubuntu22.04", session.dest)
    finally:
        await undrain_when_healthy(client, "hv1")
        await client.close()


async def test_a_vm_goes_only_where_its_network_is(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    assert [h.name for h in network_hosts(lab.layout)] == ["hv1", "hv3"]
    guest = guest_factory(host="hv1", memory_mib=128, dirty_mb=4, networks=(LAB_NETWORK,))
    client = await client_for(lab)
    try:
        view = await eventually(lambda: reported_running(client, "hv1", [guest]), timeout=20, what="hv1 reporting the guest")
        (vm,) = [vm for vm in view.vms if vm.name == guest]
        assert [(a.kind, a.source) for a in vm.attachments] == [("network", LAB_NETWORK)]

        refused = ferry(lab, "migrate", guest, "--to", "hv2", "--wait", "--json")
        assert refused.code == 1
        declined = refused.session()
        assert declined.state == SessionState.FAILED and declined.code == "network_missing"
        assert f"no libvirt network {LAB_NETWORK}" in declined.reason and "hv2" in declined.reason
        assert "network_missing" in refused.stderr
        assert_runs_only_on(lab, guest, "hv1")

        plan = ferry(lab, "migrate", guest, "--dry-run")
        assert plan.code == 0 and "hv2" in plan.stdout and "network" in plan.stdout, plan.stdout

        moved = ferry(lab, "migrate", guest, "--wait", "--json")
        assert moved.code == 0, moved.stderr
        assert moved.session().dest == "hv3"
        assert_moved_intact(lab, guest, "hv3")
    finally:
        await client.close()
