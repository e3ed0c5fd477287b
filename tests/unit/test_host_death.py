"""A lost host is a fencing candidate only when two peers cannot reach its libvirtd."""

import asyncio

import pytest

from ferry.agent.peer_probe import probe, probe_target
from ferry.coordinator.host_death import Death, DeathCheck, judge, probers
from ferry.proto.agent import ProbeReply, ProbeRequest
from ferry.proto.api import HostState, HostView
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import Capacity, HealthState

URI = "qemu+tls://hv1.example.com/system"


def view(host: str, state=HostState.UP, health=HealthState.OK) -> HostView:
    return HostView(host=host, state=state, health=health, last_seen_age=0.0, capacity=Capacity(cpus=1, memory_total_mib=1, memory_free_mib=1))


def reply(host: str, answered: bool, detail: str = "refused") -> ProbeReply:
    return ProbeReply(host=host, uri=URI, answered=answered, detail=detail)


def test_two_peers_that_cannot_reach_its_libvirtd_make_a_fencing_candidate():
    verdict, reason = judge("hv1", URI, [reply("hv2", False, "no answer"), reply("hv3", False, "refused")])
    assert verdict == Death.UNREACHABLE
    assert reason == f"hv1's libvirtd ({URI}) answers none of its peers (hv2: no answer; hv3: refused): a candidate for fencing"


def test_one_peer_that_reaches_it_means_only_the_agent_died():
    verdict, reason = judge("hv1", URI, [reply("hv2", False), reply("hv3", True, "accepts connections")])
    assert verdict == Death.ALIVE and reason.startswith("hv1's agent is silent but its libvirtd answers hv3: not fenced")


@pytest.mark.parametrize(
    "answers",
    [
        [reply("hv2", False)],
        [reply("hv2", False), "hv3 could not be asked: no responders"],
        [reply("hv2", False), reply("hv3", False, "not probed: a qemu+ssh URI is not probed")],
        [],
    ],
)
def test_fewer_than_two_peers_that_could_tell_decide_nothing(answers):
    verdict, reason = judge("hv1", URI, answers)
    assert verdict == Death.UNKNOWN and reason.endswith("nothing is fenced; check the host by hand")


def test_probers_are_up_healthy_other_hosts():
    views = [view("hv1", HostState.LOST), view("hv2", health=HealthState.CRITICAL), view("hv4"), view("hv3"), view("hv5")]
    assert probers("hv1", views) == ["hv3", "hv4"]


async def test_the_check_asks_two_peers_and_says_what_they_found():
    asked = []

    async def fake_probe(peer: str, request: ProbeRequest) -> ProbeReply:
        asked.append((peer, request.uri))
        if peer == "hv3":
            raise FerryError(ErrorCode.UNAVAILABLE, "nobody answers")
        return reply(peer, False)

    check = DeathCheck(fake_probe, lambda: [view("hv1", HostState.LOST), view("hv2"), view("hv3")], lambda host: URI)
    event = await check.check("hv1")
    assert sorted(asked) == [("hv2", URI), ("hv3", URI)] and event.peers == ["hv2"]
    assert event.verdict == "unknown" and "hv3 could not be asked: nobody answers" in event.reason
    # A peer that cannot be asked gives its turn to the next one.
    asked.clear()
    more = DeathCheck(fake_probe, lambda: [view(h) for h in ("hv1", "hv2", "hv3", "hv4")], lambda host: URI)
    event = await more.check("hv1")
    assert [peer for peer, _uri in asked] == ["hv2", "hv3", "hv4"] and event.peers == ["hv2", "hv4"]
    assert event.verdict == "unreachable"
    no_uri = await DeathCheck(fake_probe, lambda: [], lambda host: "").check("hv1")
    assert no_uri.verdict == "unknown" and no_uri.reason.startswith("hv1 never said its peer URI")


@pytest.mark.parametrize(
    "uri, target",
    [
        ("qemu+tls://hv1.example.com/system", ("hv1.example.com", 16514)),
        ("qemu+tcp://127.0.10.3/system", ("127.0.10.3", 16509)),
        ("qemu+tls://127.0.10.3:17000/system", ("127.0.10.3", 17000)),
        ("qemu+ext:///system?command=/bin/rm", "a qemu+ext URI is not probed: only qemu+tls, qemu+tcp reach libvirtd itself"),
        ("qemu+ssh://root@hv1/system", "a qemu+ssh URI is not probed: only qemu+tls, qemu+tcp reach libvirtd itself"),
        ("qemu:///system", "a qemu URI is not probed: only qemu+tls, qemu+tcp reach libvirtd itself"),
        ("qemu+tls:///system", "'qemu+tls:///system' names no host"),
        ("qemu+tls://hv1:99999/system", "'qemu+tls://hv1:99999/system' is not a libvirt URI"),
    ],
)
def test_only_a_libvirtd_port_is_probed_and_no_uri_reaches_libvirt(uri, target):
    assert probe_target(uri) == target


async def test_a_probe_connects_and_reports_what_it_found():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        found = await probe(ProbeRequest(uri=f"qemu+tls://127.0.0.1:{port}/system", seconds=2), me="hv2")
        assert found.answered and found.detail == f"libvirtd at 127.0.0.1:{port} accepts connections"
    closed = await probe(ProbeRequest(uri=f"qemu+tls://127.0.0.1:{port}/system", seconds=2), me="hv2")
    assert not closed.answered and closed.detail.startswith(f"127.0.0.1:{port} refused or unreachable")
    refused = await probe(ProbeRequest(uri="qemu+ext:///system?command=/bin/sh", seconds=2), me="hv2")
    assert not refused.answered and refused.detail.startswith("not probed: ")
