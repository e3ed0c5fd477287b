"""Every subject a daemon answers, fed malformed requests over a real nats-server:
each gets `bad_request` with a sentence, and the daemons stay up."""

import pytest

from ferry.agent.daemon import VERB_REQUESTS
from ferry.proto import subjects
from ferry.proto.codec import Decoder
from ferry.proto.errors import ErrorReply, FerryError
from ferry.runtime.identity import Role
from tests.support.cluster import connect_client, wait_hosts_up
from tests.support.processes import coordinator_toml, simulated_agent_toml
from tests.support.secured import LAB_ADMIN, connect_as

pytestmark = pytest.mark.integration

MALFORMED = {
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "10^400": b'{"id": 1' + b"0" * 400 + b', "vm": 1' + b"0" * 400 + b"}",
    "900 kB string": b'{"vm": "' + b"x" * 900_000 + b'", "host": "' + b"y" * 1000 + b'"}',
    "a list of 400,000": b'{"vms": [' + b"0," * 400_000 + b"0]}",
    "wrong type: list": b"[1, 2]",
    "wrong type: string": b'"hosts"',
    "wrong type: number": b"42",
    "invalid UTF-8": b'{"vm": "\xff\xfe"}',
    "not JSON": b"\x00\x01 garbage",
}
ERROR = Decoder(ErrorReply, "error")


async def test_every_subject_answers_every_malformed_request_with_bad_request(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url, name="c1"))
    daemons.start("hv1", "ferry-agent", simulated_agent_toml("hv1", nats_server.url, tmp_path, vms=[("g1", 1, 256)]))
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["hv1"])
    operator = await connect_as(nats_server.url)
    coordinator = await connect_as(nats_server.url, "c-test", Role.COORDINATOR)
    asked = [
        *((operator, subjects.api(verb, caller=LAB_ADMIN)) for verb in (*subjects.READ_VERBS, *subjects.WRITE_VERBS)),
        *((operator, subjects.via_api("c1", verb, caller=LAB_ADMIN)) for verb in ("hosts", "migrate")),
        *((coordinator, subjects.agent_verb("hv1", verb)) for verb in VERB_REQUESTS),
    ]
    answers: dict[tuple[str, str], str] = {}
    try:
        for nc, subject in asked:
            for name, payload in MALFORMED.items():
                msg = await nc.request(subject, payload, timeout=10)
                try:
                    reply = ERROR.decode(msg.data)
                except FerryError:
                    answers[(subject, name)] = f"answered: {msg.data[:80]!r}"
                    continue
                answers[(subject, name)] = reply.code
                assert reply.message, (subject, name)
    finally:
        await operator.close()
        await coordinator.close()
    wrong = {key: code for key, code in answers.items() if code != "bad_request"}
    assert not wrong, wrong
    print(f"{len(answers)} malformed requests on {len(asked)} subjects: all bad_request")
    assert all(p.poll() is None for p in daemons.procs.values()), "the daemons stay up"
    async with await connect_client(nats_server) as client:
        assert [h.state for h in (await client.hosts()).hosts] == ["up"]
