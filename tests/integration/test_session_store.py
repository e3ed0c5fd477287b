"""The session store against a real JetStream."""

import asyncio

import msgspec
import pytest

from ferry.coordinator.kv import TypedBucket, open_bucket
from ferry.coordinator.session_store import SessionStore
from ferry.coordinator.transitions import advance
from ferry.proto.errors import FerryError
from ferry.proto.session import MigrateOptions, Session, SessionState

pytestmark = pytest.mark.integration
from ferry.runtime.identity import Role
from tests.support.secured import connect_as


def session(sid="s00001", created=1.0) -> Session:
    return Session(id=sid, vm="g1", source="hv1", options=MigrateOptions(), state=SessionState.QUEUED,
                   created_at=created, updated_at=created)


@pytest.fixture
async def store(nats_server):
    nc = await connect_as(nats_server.url, "c-test", Role.COORDINATOR)
    yield await SessionStore.open(nc.jetstream())
    await nc.close()


async def test_create_get_and_list(store):
    await store.create(session("s00002", created=2.0))
    await store.create(session("s00001", created=1.0))
    got, revision = await store.get("s00001")
    assert got == session("s00001") and revision > 0
    assert [s.id for s in await store.all()] == ["s00001", "s00002"]


async def test_duplicate_and_missing(store):
    await store.create(session())
    with pytest.raises(FerryError) as dup:
        await store.create(session())
    assert dup.value.code == "conflict"
    with pytest.raises(FerryError) as missing:
        await store.get("nosuch1")
    assert (missing.value.code, missing.value.message) == ("not_found", "there is no session nosuch1")


async def test_stale_revision_is_refused(store):
    rev = await store.create(session())
    s, _ = await store.get("s00001")
    await store.put_if(advance(s, SessionState.PREPARING, at=2.0), rev)
    with pytest.raises(FerryError) as stale:
        await store.put_if(advance(s, SessionState.CANCELLED, at=3.0), rev)
    assert stale.value.code == "conflict"
    assert (await store.get("s00001"))[0].state == SessionState.PREPARING


async def test_concurrent_changes_all_apply_exactly_once(store):
    await store.create(session())

    def touch(i):
        return lambda s: msgspec.structs.replace(s, candidates_tried=[*s.candidates_tried, f"hv{i}"])

    await asyncio.gather(*(store.change("s00001", touch(i)) for i in range(10)))
    final, _ = await store.get("s00001")
    assert sorted(final.candidates_tried) == sorted(f"hv{i}" for i in range(10))


async def test_race_between_cancel_and_completion_has_one_winner(store):
    await store.create(session())
    await store.change("s00001", lambda s: advance(s, SessionState.PREPARING, at=2.0))
    await store.change("s00001", lambda s: advance(s, SessionState.MIGRATING, at=3.0))
    results = await asyncio.gather(
        store.change("s00001", lambda s: advance(s, SessionState.COMPLETED, at=4.0)),
        store.change("s00001", lambda s: advance(s, SessionState.CANCELLED, at=4.0)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Session)]
    losers = [r for r in results if isinstance(r, FerryError)]
    assert len(winners) == 1 and len(losers) == 1 and losers[0].code == "conflict"
    final, _ = await store.get("s00001")
    assert final.state == winners[0].state
    assert [t.state for t in final.history][-1] == final.state


async def test_store_survives_a_nats_restart(nats_server):
    nc = await connect_as(nats_server.url, "c-test", Role.COORDINATOR)
    store = await SessionStore.open(nc.jetstream())
    await store.create(session())
    await nc.close()
    nats_server.restart()
    nc = await connect_as(nats_server.url, "c-test", Role.COORDINATOR)
    store = await SessionStore.open(nc.jetstream())
    assert (await store.get("s00001"))[0] == session()
    await nc.close()


async def test_listing_sees_every_record_written_before_it_even_under_concurrent_writes(store):
    # nats-py's KeyValue.keys() can end its replay early and list some keys or
    # none; the store lists from the stream's state instead (coordinator/kv.py).
    assert await store.all() == []
    for i in range(40):
        await store.create(session(f"s{i:05d}", created=float(i)))

    async def keep_writing() -> None:
        for n in range(1000, 1100):
            await store.create(session(f"s{n:05d}", created=float(n)))
            await asyncio.sleep(0.005)

    writer = asyncio.create_task(keep_writing())
    try:
        for _ in range(10):
            listed = {s.id for s in await store.all()}
            assert {f"s{i:05d}" for i in range(40)} <= listed
    finally:
        await writer


async def test_a_deleted_record_is_not_listed(nats_server):
    nc = await connect_as(nats_server.url, "c-test", Role.COORDINATOR)
    try:
        bucket = TypedBucket(await open_bucket(nc.jetstream(), "ferry_test_deleted", "test"), Session, "session")
        await bucket.create("a", session("s0000a"))
        await bucket.create("b", session("s0000b"))
        await bucket.delete("a")
        assert [s.id for s in await bucket.all()] == ["s0000b"]
    finally:
        await nc.close()
