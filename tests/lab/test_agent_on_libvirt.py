"""ferry-agent on the libvirt backend against the lab's real libvirtds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

FERRY = str(Path(sys.executable).parent / "ferry")


def ferry_hosts(lab) -> dict:
    out = subprocess.run([FERRY, *lab.cli_args(), "hosts", "--json", "--vms"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return {h["host"]: h for h in json.loads(out.stdout)["hosts"]}


def wait_for(lab, check, timeout=30.0):
    import time
    deadline = time.monotonic() + timeout
    while True:
        hosts = ferry_hosts(lab)
        if check(hosts):
            return hosts
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {json.dumps(hosts)[:2000]}")
        time.sleep(0.5)


def test_agents_report_real_capacity_from_libvirt(lab_with_ferry):
    lab = lab_with_ferry
    names = [h.name for h in lab.hosts]
    hosts = wait_for(lab, lambda h: set(h) == set(names) and all(v["state"] == "up" for v in h.values()))
    with open("/proc/meminfo") as f:
        mem_total_mib = int(f.readline().split()[1]) // 1024
    for layout in lab.hosts:
        h = hosts[layout.name]
        assert h["backend"] == "libvirt"
        assert h["capacity"]["cpus"] == os.cpu_count()
        assert abs(h["capacity"]["memory_total_mib"] - mem_total_mib) <= 1
        assert 0 < h["capacity"]["memory_free_mib"] <= mem_total_mib
        assert h["versions"]["libvirt"] and h["versions"]["qemu"]  # their minimum: tests/lab/test_real_install.py
        assert h["cpu_model"]
        # Each lab host has its own UUID: libvirt refuses migrating to "itself" otherwise.
        assert h["host_uuid"] == layout.uuid
        assert h["health"] == "ok", h["checks"]
        assert {c["name"] for c in h["checks"]} == {"hypervisor", "memory", "images_disk"}


def test_a_new_guest_shows_up_with_its_size(lab_with_ferry, guest_factory):
    lab = lab_with_ferry
    name = guest_factory(host="hv2", memory_mib=192, wait_ticks=1)

    def has_guest(hosts):
        vms = {vm["name"]: vm for vm in hosts.get("hv2", {}).get("vms", [])}
        return name in vms and vms[name]["state"] == "running"

    hosts = wait_for(lab, has_guest, timeout=15)
    vm = next(vm for vm in hosts["hv2"]["vms"] if vm["name"] == name)
    assert vm["memory_mib"] == 192 and vm["vcpus"] >= 1 and vm["persistent"]
    assert hosts["hv2"]["capacity"]["memory_used_mib"] >= 192
    assert all(vm["name"] != name for vm in hosts["hv1"]["vms"] + hosts["hv3"]["vms"])
