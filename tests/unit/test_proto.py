import msgspec
import pytest

from ferry.proto import subjects
from ferry.proto.api import HostsReply, HostsRequest
from ferry.proto.codec import Decoder, ReplyDecoder, encode
from ferry.proto.errors import ErrorReply, FerryError
from ferry.proto.host import Capacity, HealthState, HostStatus, VmInfo
from ferry.proto.names import HostName, VmName


class Named(msgspec.Struct):
    host: HostName
    vm: VmName = "x"


@pytest.mark.parametrize("data", [b"\xff\x00", b"[1,2", b"null", b"42", b'"str"', b"{\"host\": 1}"])
def test_garbage_is_a_bad_request_not_a_crash(data):
    with pytest.raises(FerryError) as caught:
        Decoder(Named, "request").decode(data)
    assert caught.value.code == "bad_request"
    assert caught.value.message.startswith(("invalid request", "request is not valid JSON", "request is not UTF-8"))


def test_empty_body_decodes_as_defaults():
    assert Decoder(HostsRequest, "hosts request").decode(b"") == HostsRequest()


def test_unknown_fields_are_ignored_for_mixed_version_clusters():
    assert Decoder(HostsRequest, "r").decode(b'{"include_lost": false, "future": 1}') == HostsRequest(
        include_lost=False
    )


def test_status_roundtrip():
    status = HostStatus(
        host="hv1",
        seq=3,
        boot_id="b",
        sent_at=1.5,
        interval=2.0,
        capacity=Capacity(cpus=4, memory_total_mib=8192, memory_free_mib=4096, vcpus_used=2, memory_used_mib=512),
        health=HealthState.WARNING,
        vms=[VmInfo(name="g1", vcpus=2, memory_mib=512)],
    )
    assert Decoder(HostStatus, "status").decode(encode(status)) == status


def test_reply_decoder_raises_error_replies():
    data = encode(ErrorReply(code="unknown_vm", message="no VM named g9 is known"))
    with pytest.raises(FerryError) as caught:
        ReplyDecoder(HostsReply, "hosts").decode(data)
    assert (caught.value.code, caught.value.message) == ("unknown_vm", "no VM named g9 is known")


def test_reply_decoder_passes_replies():
    assert ReplyDecoder(HostsReply, "hosts").decode(encode(HostsReply(hosts=[]))) == HostsReply(hosts=[])


@pytest.mark.parametrize(
    "states, worst",
    [
        ([], HealthState.OK),
        ([HealthState.OK, HealthState.OK], HealthState.OK),
        ([HealthState.OK, HealthState.WARNING], HealthState.WARNING),
        ([HealthState.CRITICAL, HealthState.WARNING, HealthState.OK], HealthState.CRITICAL),
    ],
)
def test_worst_health(states, worst):
    assert HealthState.worst(states) == worst


def test_subjects():
    assert subjects.host_status("hv1") == "ferry.host.hv1.status"
    assert subjects.host_event("hv1") == "ferry.host.hv1.event"
    assert subjects.host_session("hv1", "abc123") == "ferry.host.hv1.session.abc123"
    assert subjects.agent_verb("hv2", "prepare") == "ferry.agent.hv2.prepare"
    assert subjects.api("hosts", caller="alice") == "ferry.api.alice.hosts"
    assert subjects.via_api("c1.dc", "drain", caller="alice") == "ferry.api.alice.via.c1_dc.drain"
    assert subjects.leader_api("drain", caller="alice") == "ferry.coordinator.leader.alice.drain"
    for subject in (subjects.api("hosts", caller="bob"), subjects.via_api("c1", "hosts", caller="bob"),
                    subjects.leader_api("cancel", caller="bob")):
        assert subjects.caller_of(subject) == "bob"
    assert subjects.caller_of("ferry.host.hv1.status") == ""
    assert subjects.token_from_subject("ferry.host.hv3.status") == "hv3"
    assert subjects.token_from_subject("other.host.hv3.status") is None
