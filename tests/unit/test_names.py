"""VM names are data (any name libvirt accepts); host names follow RFC 1123 and map
to subject tokens by one rule; a heartbeat with one bad VM entry keeps its host."""

import itertools

import msgspec
import pytest

from ferry.coordinator.registry import Registry
from ferry.proto import subjects
from ferry.proto.api import HostState
from ferry.proto.codec import Decoder, encode
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import Capacity, HostStatus, StatusDecoder, UnreadableVm, VmInfo
from ferry.proto.names import HostName, VmName, host_name_problem, host_token, vm_name_problem


class Named(msgspec.Struct):
    vm: VmName = "x"
    host: HostName = "hv1"


GOOD_VM_NAMES = [
    "ubuntu22.04",  # what virt-install suggests
    "db.prod.example.com",
    "web.prod-1.example.com",
    "a",
    "with space",
    "ünïcødé-名前",
    "emoji-🚢",
    "[bold]not markup[red]",
    "x" * 255,
]
BAD_VM_NAMES = ["", "a\nb", "trailing\n", "tab\there", "bell\x07", "del\x7f", "c1\x85", "a/b", "x" * 256]


@pytest.mark.parametrize("name", GOOD_VM_NAMES)
def test_any_name_libvirt_accepts_is_a_vm_name(name):
    assert Decoder(Named, "request").decode(encode({"vm": name})).vm == name
    assert vm_name_problem(name) is None


@pytest.mark.parametrize("name", BAD_VM_NAMES)
def test_vm_names_with_control_characters_slashes_or_too_long_are_refused(name):
    with pytest.raises(FerryError) as caught:
        Decoder(Named, "request").decode(encode({"vm": name}))
    assert caught.value.code == ErrorCode.BAD_REQUEST and "$.vm" in caught.value.message
    assert vm_name_problem(name) is not None


def test_a_refused_name_is_explained_in_words_not_a_regex():
    with pytest.raises(FerryError) as caught:
        Decoder(Named, "migrate request").decode(encode({"vm": "a\nb"}))
    assert caught.value.message == "invalid migrate request: Expected a VM name (no control characters, no '/') - at `$.vm`"


GOOD_HOST_NAMES = ["hv1", "HV-01", "7host", "hv1.dc1.example.com", "a" * 63, ".".join(["a" * 63] * 3) + "." + "b" * 61]
BAD_HOST_NAMES = [
    "", "hv_1", "-lead", "trail-", "a..b", ".lead", "trail.", "a" * 64, "a b", "a*", "a>", "hv1\n", "ünï",
    ".".join(["a" * 63] * 4),  # 255 characters
]


@pytest.mark.parametrize("name", GOOD_HOST_NAMES)
def test_rfc1123_host_names_pass(name):
    assert Decoder(Named, "request").decode(encode({"host": name})).host == name
    assert host_name_problem(name) is None


@pytest.mark.parametrize("name", BAD_HOST_NAMES)
def test_other_host_names_are_refused(name):
    with pytest.raises(FerryError) as caught:
        Decoder(Named, "request").decode(encode({"host": name}))
    assert "$.host" in caught.value.message
    assert host_name_problem(name) is not None


@pytest.mark.parametrize(
    "host, token",
    [("hv1", "hv1"), ("hv1.dc1.example.com", "hv1_dc1_example_com"), ("HV-01.Example.NET", "HV-01_Example_NET")],
)
def test_a_host_name_becomes_its_subject_token_by_one_rule(host, token):
    assert host_token(host) == token
    assert subjects.host_status(host) == f"ferry.host.{token}.status"
    assert subjects.agent_verb(host, "prepare") == f"ferry.agent.{token}.prepare"
    assert subjects.host_session(host, "abc123") == f"ferry.host.{token}.session.abc123"
    assert subjects.speaks_for(subjects.host_event(host), host)


def test_no_two_host_names_share_a_token():
    labels = ["a", "b", "a-b", "ab"]
    names = {".".join(parts) for n in (1, 2, 3) for parts in itertools.product(labels, repeat=n)}
    assert all(host_name_problem(n) is None for n in names)
    assert len({host_token(n) for n in names}) == len(names)


def test_a_message_under_another_hosts_token_does_not_speak_for_it():
    assert not subjects.speaks_for("ferry.host.hv2.status", "hv1")
    assert not subjects.speaks_for("ferry.host.hv1_example_com.status", "hv1")
    assert not subjects.speaks_for("other.host.hv1.status", "hv1")


def status(vms: list) -> bytes:
    """A heartbeat whose VM entries are given as plain data (so they can be wrong)."""
    good = HostStatus(
        host="hv1", seq=1, boot_id="b", sent_at=1.0, interval=2.0,
        capacity=Capacity(cpus=4, memory_total_mib=8192, memory_free_mib=4096),
    )
    return encode({**msgspec.to_builtins(good), "vms": vms})


def test_a_good_heartbeat_decodes_whole_with_nothing_rejected():
    data = status([{"name": "ubuntu22.04", "vcpus": 1}, {"name": "web.prod-1.example.com"}])
    decoded, rejected = StatusDecoder().decode(data)
    assert [vm.name for vm in decoded.vms] == ["ubuntu22.04", "web.prod-1.example.com"] and rejected == []


def test_one_undecodable_vm_entry_never_costs_the_host():
    data = status([
        {"name": "ubuntu22.04", "vcpus": 1, "memory_mib": 256},
        {"name": "broken", "vcpus": -3},
        {"name": "bad\nname"},
        {"vcpus": 2},
        "not an object",
        {"name": "db.prod.example.com", "state": "running"},
    ])
    decoded, rejected = StatusDecoder().decode(data)
    assert [vm.name for vm in decoded.vms] == ["ubuntu22.04", "db.prod.example.com"]
    assert rejected == [
        "VM entry 1 ('broken') was dropped: Expected `int` >= 0 - at `$.vcpus`",
        "VM entry 2 ('bad\\nname') was dropped: the VM name 'bad\\nname' holds a control character or '/'",
        "VM entry 3 was dropped: Object missing required field `name`",
        "VM entry 4 was dropped: Expected `object`, got `str`",
    ]
    registry = Registry(timeout=6.0)
    registry.observe(decoded, now=0.0, rejected_vms=rejected)
    view = registry.view("hv1", now=1.0)
    assert view.state == HostState.UP and [vm.name for vm in view.vms] == ["ubuntu22.04", "db.prod.example.com"]
    assert view.vm_problems == rejected
    assert registry.sweep(now=5.0) == []  # it keeps counting as heard from


def test_a_vm_state_from_a_newer_agent_drops_that_entry_only():
    decoded, rejected = StatusDecoder().decode(status([{"name": "a", "state": "hibernating"}, {"name": "b"}]))
    assert [vm.name for vm in decoded.vms] == ["b"] and "VM entry 0 ('a')" in rejected[0]


def test_a_heartbeat_wrong_outside_its_vms_is_refused():
    with pytest.raises(FerryError) as caught:
        StatusDecoder().decode(encode({"type": "status", "host": "hv_1"}))
    assert caught.value.code == ErrorCode.BAD_REQUEST


def test_what_the_agent_could_not_describe_is_shown_with_the_host():
    registry = Registry(timeout=6.0)
    decoded, _ = StatusDecoder().decode(status([{"name": "ok"}]))
    decoded = msgspec.structs.replace(decoded, unreadable_vms=[UnreadableVm(name="odd", reason="internal error: boom")])
    registry.observe(decoded, now=0.0)
    assert registry.view("hv1", 0.0).vm_problems == ["odd: the agent could not describe it: internal error: boom"]
    assert [vm.name for vm in registry.view("hv1", 0.0).vms] == ["ok"]


def test_vm_info_round_trips_with_any_name():
    for name in GOOD_VM_NAMES:
        info = VmInfo(name=name)
        assert msgspec.json.decode(encode(info), type=VmInfo) == info


def test_a_name_the_agent_could_not_carry_is_shown_escaped_never_as_terminal_codes():
    registry = Registry(timeout=6.0)
    decoded, _ = StatusDecoder().decode(status([]))
    odd = UnreadableVm(name="evil\x1b[2Jname\t\u200b", reason="bad\nname")
    registry.observe(msgspec.structs.replace(decoded, unreadable_vms=[odd]), now=0.0)
    (problem,) = registry.view("hv1", 0.0).vm_problems
    assert problem == "evil\\x1b[2Jname\\t\\u200b: the agent could not describe it: bad\\nname"
    assert all(ch.isprintable() for ch in problem)
