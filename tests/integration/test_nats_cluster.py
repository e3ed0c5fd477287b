"""Three clustered nats-servers, as in production and in the lab: R3 data reads
through any server, and a client given every URL outlives the loss of the one
it uses."""

from urllib.parse import urlparse

import msgspec
import pytest
from nats.js.api import KeyValueConfig

from ferry.runtime.connection import connect_once
from ferry.runtime.identity import Role
from tests.support.nats_server import NatsCluster, free_port
from tests.support.secured import connect_as, settings_for
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def port_of(url: str) -> int:
    return urlparse(url).port or 0


async def test_the_cluster_forms_and_an_r3_bucket_reads_through_any_server(nats_cluster: NatsCluster) -> None:
    nc = await connect_as(nats_cluster.urls[:1], "c-test", Role.COORDINATOR)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(KeyValueConfig(bucket="r3", replicas=3))
        await kv.put("greeting", b"hello")
        cluster = (await js.stream_info("KV_r3")).cluster
        assert cluster is not None and cluster.replicas is not None
        assert sorted([cluster.leader, *(peer.name for peer in cluster.replicas)]) == ["n1", "n2", "n3"]
    finally:
        await nc.close()

    for url in nats_cluster.urls:
        nc = await connect_as([url], "c-test", Role.COORDINATOR)
        try:
            assert nc.connected_url is not None and nc.connected_url.port == port_of(url)
            kv = await nc.jetstream().key_value("r3")
            entry = await kv.get("greeting")
            assert entry.value == b"hello"
        finally:
            await nc.close()


async def test_a_client_given_every_url_keeps_working_when_its_server_is_killed(nats_cluster: NatsCluster) -> None:
    setup = await connect_as(nats_cluster.urls, "c-test", Role.COORDINATOR)
    try:
        kv = await setup.jetstream().create_key_value(KeyValueConfig(bucket="moves", replicas=3))
        await kv.put("before", b"1")
        leader = (await setup.jetstream().stream_info("KV_moves")).cluster.leader  # type: ignore[union-attr]
    finally:
        await setup.close()
    # Kill a server that does not lead the bucket's stream: a leader's loss stalls
    # writes for seconds until a new one is elected, which is not what this test is about.
    victim = next(i for i, server in enumerate(nats_cluster.servers) if server.store_dir.name != leader)
    urls = [nats_cluster.urls[victim], *(u for i, u in enumerate(nats_cluster.urls) if i != victim)]
    nc = await connect_as(urls, "c-test", Role.COORDINATOR, dont_randomize=True, reconnect_time_wait=0.2)
    try:
        assert nc.connected_url is not None and nc.connected_url.port == port_of(nats_cluster.urls[victim])
        kv = await nc.jetstream(timeout=1.0).key_value("moves")

        nats_cluster.kill(victim)

        async def put_and_get() -> bool:
            await kv.put("after", b"2")
            return (await kv.get("after")).value == b"2"

        await eventually(put_and_get, timeout=15.0, every=0.1, what="a put and get after the kill")
        assert nc.connected_url is not None and nc.connected_url.port != port_of(nats_cluster.urls[victim])
    finally:
        await nc.close()

    # The killed server comes back on its port and store and catches up.
    nats_cluster.start_server(victim)
    alone = await connect_as([nats_cluster.urls[victim]], "c-test", Role.COORDINATOR)
    try:
        kv = await alone.jetstream().key_value("moves")
        assert (await kv.get("before")).value == b"1" and (await kv.get("after")).value == b"2"
    finally:
        await alone.close()


async def test_connect_once_gets_past_a_dead_first_url(nats_cluster: NatsCluster) -> None:
    dead = f"tls://127.0.0.1:{free_port()}"
    settings = msgspec.structs.replace(settings_for(nats_cluster.urls, connect_timeout=1.0), servers=[dead, *nats_cluster.urls])
    # nats-py shuffles the list: several tries, so the dead URL is tried first in some.
    for _ in range(6):
        nc = await connect_once(settings, name="ferry-test")
        try:
            assert nc.is_connected and nc.connected_url is not None
            assert nc.connected_url.port in {port_of(url) for url in nats_cluster.urls}
        finally:
            await nc.close()
