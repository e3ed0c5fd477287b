"""Malformed input to every decoder is `bad_request` with a sentence: never
another exception, a hang or memory in proportion to what the sender claims."""

import json

import msgspec
import pytest

from ferry.proto.codec import MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES, Decoder, ReplyDecoder, encode, request_decoder
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import StatusDecoder
from tests.support.decoders import all_decoders, request_decoders, request_types

BIG_INT = b"1" + b"0" * 400  # 10**400
HOSTILE = {
    "array nested 100000 deep": b"[" * 100_000,
    "object nested 100000 deep": b'{"a":' * 100_000,
    "closed nesting 100000 deep": b"[" * 100_000 + b"]" * 100_000,
    "nesting inside an unknown field": b'{"zz":' + b"[" * 5_000 + b"]" * 5_000 + b"}",
    "10**400": BIG_INT,
    "1e400": b"1e400",
    "900 kB string": b'"' + b"a" * 900_000 + b'"',
    "list of 10**6 elements": b"[" + b"0," * 999_999 + b"0]",
    "number": b"42",
    "string": b'"hosts"',
    "true": b"true",
    "null": b"null",
    "empty list": b"[]",
    # At the top: a field nobody reads is skipped without its text being checked.
    "invalid UTF-8": b'"\xff\xfe"',
    "NUL bytes": b"\x00\x00\x00",
    "NUL inside a string": b'"a\x00b"',
    "truncated": b'{"vm":"web',
    "NaN": b'{"x": NaN}',
}
# Values that no field of any request may hold.
HOSTILE_VALUES = {
    "10**400": BIG_INT,
    "-1e400": b"-1e400",
    "900 kB string": b'"' + b"a" * 900_000 + b'"',
    "list of 10**6 elements": b"[" + b"0," * 999_999 + b"0]",
    "nesting 100000 deep": b"[" * 100_000 + b"]" * 100_000,
}
DECODERS = all_decoders()


def refusal(decoder, data: bytes) -> FerryError:
    with pytest.raises(FerryError) as caught:
        decoder.decode(data)
    return caught.value


def decoded_or_refused(decoder, data: bytes) -> None:
    try:
        decoder.decode(data)
    except FerryError as exc:
        assert exc.code == ErrorCode.BAD_REQUEST
        assert exc.message and "\n" not in exc.message


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("name", sorted(all_decoders()))
def test_malformed_input_is_a_bad_request_for_every_decoder(name, data):
    decoder = DECODERS[name]
    if data.startswith(b'{"zz":'):
        decoded_or_refused(decoder, data)  # the unknown field is skipped: a value is fine too
        return
    error = refusal(decoder, data)
    assert error.code == ErrorCode.BAD_REQUEST
    assert error.message and "\n" not in error.message


def field_payloads(type_: type, value: bytes) -> list[bytes]:
    """`value` in each field of `type_`, the others left out (tag included)."""
    config = type_.__struct_config__
    tag = json.dumps({config.tag_field: config.tag}).encode()[1:-1] + b"," if config.tag else b""
    return [b'{' + tag + json.dumps(field).encode() + b":" + value + b"}" for field in type_.__struct_fields__]


@pytest.mark.parametrize("value", HOSTILE_VALUES.values(), ids=HOSTILE_VALUES.keys())
@pytest.mark.parametrize("name", sorted(request_types()))
def test_a_hostile_value_in_any_field_of_a_request_is_a_bad_request(name, value):
    decoder = request_decoders()[name]
    for payload in field_payloads(request_types()[name], value):
        assert refusal(decoder, payload).code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    "data, message",
    [
        (b"[" * 100_000, "invalid migrate request: Expected `object`, got `array`"),
        (b'{"a":' * 40_000, "migrate request is nested too deeply to be read"),
        (b'{"vm":"web","x":' + b"[" * 40_000 + b"]" * 40_000 + b"}", "migrate request is nested too deeply to be read"),
        (b'{"a":' * 100_000, f"migrate request is 500000 bytes, more than the {MAX_REQUEST_BYTES} accepted"),
        (b'"' + b"a" * 900_000 + b'"', f"migrate request is 900002 bytes, more than the {MAX_REQUEST_BYTES} accepted"),
        (b'{"vm":"web","options":{"priority":' + BIG_INT + b"}}",
         "migrate request holds an integer of 401 digits; integers here fit in 64 bits"),
        (b'{"vm":"web","x":-' + BIG_INT + b"}", "migrate request holds an integer of 401 digits; integers here fit in 64 bits"),
        (b'{"vm":"web","options":{"priority":1' + b"0" * 5000 + b"}}",
         "invalid migrate request: Integer value out of range - at `$.options.priority`"),
        (b'{"vm":1e400}', "invalid migrate request: Number out of range - at `$.vm`"),
        (b'{"vm":5}', "invalid migrate request: Expected `str`, got `int` - at `$.vm`"),
        (b'{"vm":"\xff"}', "migrate request is not UTF-8 (byte 7)"),
        (b"\x00", "migrate request is not valid JSON (JSON is malformed: invalid character (byte 0))"),
    ],
)
def test_each_refusal_says_why(data, message):
    from ferry.proto.api import MigrateRequest

    assert refusal(request_decoder(MigrateRequest, "migrate"), data).message == message


@pytest.mark.parametrize(
    "data, decoded",
    [
        (b'{"n": 18446744073709551615}', {"n": 2**64 - 1}),
        (b'{"n": -9223372036854775808}', {"n": -(2**63)}),
        (b'{"n": "vm-000000000000000000000000"}', {"n": "vm-000000000000000000000000"}),  # digits in a string
        (b'{"n": 1.00000000000000000000001}', {"n": 1.0}),
    ],
)
def test_integers_and_digits_within_64_bits_pass(data, decoded):
    assert Decoder(dict, "thing").decode(data) == decoded


@pytest.mark.parametrize("data", [b'{"n": 18446744073709551616}', b'{"n": -9223372036854775809}', b'[[[1' + b"0" * 30 + b"]]]"])
def test_integers_beyond_64_bits_are_refused(data):
    assert refusal(Decoder(dict | list, "thing"), data).code == ErrorCode.BAD_REQUEST


def test_the_request_cap_leaves_room_for_the_largest_prepare_request():
    from ferry.proto.agent import DiskInfo, PrepareRequest, VmDescription
    from ferry.proto.host import Versions
    from ferry.proto.network import Attachment
    from ferry.proto.session import MigrateOptions

    # A guest with a long CPU definition, 64 disks and 32 interfaces, every name at its longest.
    vm = VmDescription(
        name="v" * 255, uuid="u" * 36, vcpus=512, memory_mib=1 << 22, arch="x86_64", virt_type="kvm",
        cpu_xml="<cpu>" + "<feature policy='require' name='avx512-vp2intersect'/>" * 300 + "</cpu>",
        disks=[DiskInfo(target=f"vd{i}", path="/var/lib/libvirt/images/" + "d" * 200) for i in range(64)],
        attachments=[Attachment(kind="network", source="n" * 64, portgroup="p" * 64)] * 32,
    )
    request = PrepareRequest(session_id="s" * 32, vm=vm, source="h" * 63, source_versions=Versions(), options=MigrateOptions())
    data = encode(request)
    assert len(data) * 4 < MAX_REQUEST_BYTES
    assert request_decoder(PrepareRequest, "prepare request").decode(data) == request


def test_the_message_cap_leaves_room_for_a_heartbeat_of_thousands_of_vms():
    from ferry.proto.host import Capacity, HostStatus, VmInfo
    from ferry.proto.network import Attachment

    vms = [
        VmInfo(name=f"customer-{i:05d}-web-production", uuid="6f1e2a3b-1111-2222-3333-444455556666", vcpus=4,
               memory_mib=8192, attachments=[Attachment(kind="network", source="tenant-1234", portgroup="vlan-100")])
        for i in range(10_000)
    ]
    status = HostStatus(
        host="hv1", seq=1, boot_id="b", sent_at=1.0, interval=2.0,
        capacity=Capacity(cpus=256, memory_total_mib=1 << 22, memory_free_mib=1 << 21), vms=vms,
    )
    data = encode(status)
    assert len(data) < MAX_MESSAGE_BYTES
    assert StatusDecoder().decode(data) == (status, [])


def test_a_message_bigger_than_its_cap_is_refused_unread():
    decoder = Decoder(dict, "thing", max_bytes=10)
    assert refusal(decoder, b'{"a": "12345"}').message == "thing is 14 bytes, more than the 10 accepted"
    assert decoder.decode(b'{"a": "1"}') == {"a": "1"}


def test_a_reply_that_cannot_be_read_is_internal_never_another_exception():
    from ferry.proto.api import HostsReply

    decoder = ReplyDecoder(HostsReply, "hosts")
    for data in (b"[" * 100_000, BIG_INT, b"\xff", b"x" * (MAX_MESSAGE_BYTES + 1)):
        error = refusal(decoder, data)
        assert error.code == ErrorCode.INTERNAL and error.message


def heartbeat_with(entry: dict) -> bytes:
    from ferry.proto.host import Capacity, HostStatus, VmInfo

    status = HostStatus(
        host="hv1", seq=1, boot_id="b", sent_at=1.0, interval=2.0,
        capacity=Capacity(cpus=4, memory_total_mib=1024, memory_free_mib=512), vms=[VmInfo(name="g1")],
    )
    whole = msgspec.json.decode(encode(status))
    whole["vms"].append(entry)
    return json.dumps(whole).encode()


def test_a_heartbeat_with_one_malformed_vm_entry_keeps_the_others():
    from ferry.proto.host import VmInfo

    decoded, dropped = StatusDecoder().decode(heartbeat_with({"name": "g2", "vcpus": "many"}))
    assert decoded.vms == [VmInfo(name="g1")]
    assert dropped == ["VM entry 1 ('g2') was dropped: Expected `int`, got `str` - at `$.vcpus`"]


def test_a_heartbeat_with_an_integer_beyond_64_bits_is_refused_whole():
    error = refusal(StatusDecoder(), heartbeat_with({"name": "g2", "vcpus": 10**400}))
    assert error.message == "host status holds an integer of 401 digits; integers here fit in 64 bits"


def test_every_agent_verb_reads_a_request_type_tested_here():
    from ferry.agent.daemon import VERB_REQUESTS

    assert set(VERB_REQUESTS.values()) <= set(request_types().values())
