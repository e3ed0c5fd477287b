"""`ferry-admin backup` and `restore` against a real JetStream, through the real command."""

import json
import subprocess
import time

import msgspec
import pytest

from ferry.cli.backup import FORMAT, LEASE_KEY, lease_in_use, stale_keys
from ferry.coordinator.drains import open_drain_records
from ferry.coordinator.kv import open_bucket
from ferry.coordinator.leadership import BUCKET as LEADER_BUCKET
from ferry.coordinator.session_store import SessionStore
from ferry.proto.codec import encode
from ferry.proto.drain import Drain, DrainState
from ferry.proto.leader import Lease
from ferry.proto.session import MigrateOptions, Session, SessionState
from ferry.runtime.identity import Role
from tests.support.processes import script
from tests.support.secured import cli_args, connect_as

pytestmark = pytest.mark.integration


def _session(sid: str) -> Session:
    return Session(id=sid, vm=f"vm {sid}", source="hv1", options=MigrateOptions(), state=SessionState.COMPLETED,
                   created_at=1.0, updated_at=2.0)


def _admin(nats_server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [script("ferry-admin"), *args, *cli_args(nats_server.url, "c-backup", Role.COORDINATOR)],
        capture_output=True, text=True, timeout=60,
    )


def test_lease_in_use_and_stale_keys():
    lease = Lease(holder="c1", instance="i", term=3, since=0.0, renewed_at=100.0, lease_seconds=4.0)
    assert lease_in_use(lease, 105.0) and not lease_in_use(lease, 108.5) and not lease_in_use(None, 0.0)
    assert stale_keys(["a", "b", "c"], ["b"]) == ["a", "c"]


async def test_backup_then_restore_brings_back_sessions_and_drains(nats_server, tmp_path):
    nc = await connect_as(nats_server.url, "c-test", Role.COORDINATOR)
    try:
        js = nc.jetstream()
        store = await SessionStore.open(js)
        for sid in ("s00001", "s00002"):
            await store.create(_session(sid))
        drains = await open_drain_records(js)
        await drains.store.create("hv2", Drain(host="hv2", state=DrainState.DONE, started_at=1.0, updated_at=1.0,
                                               reason="kernel update"))
        leader = await open_bucket(js, LEADER_BUCKET, "lease")
        await leader.kv.put(LEASE_KEY, encode(Lease(holder="c1", instance="i", term=1, since=0.0, renewed_at=1.0,
                                                     lease_seconds=4.0)))

        file = tmp_path / "ferry.backup"
        made = _admin(nats_server, "backup", str(file))
        assert made.returncode == 0, made.stderr
        assert "ferry_sessions: 2 keys" in made.stdout and "ferry_drains: 1 keys" in made.stdout
        assert file.stat().st_mode & 0o077 == 0
        saved = json.loads(file.read_text())
        assert saved["format"] == FORMAT and LEADER_BUCKET not in {b["name"] for b in saved["buckets"]}

        # Lost: one session deleted, one added after the backup, the drain bucket gone entirely.
        await store._records.bucket.kv.delete("s00001")
        await store.create(_session("s00003"))
        await js.delete_key_value("ferry_drains")

        restored = _admin(nats_server, "restore", str(file))
        assert restored.returncode == 0, restored.stderr
        assert "ferry_sessions: 2 keys restored, 1 deleted" in restored.stdout
        assert sorted(s.id for s in await store.all()) == ["s00001", "s00002"]
        drains = await open_drain_records(js)
        await drains.start()
        assert set(drains.values()) == {"hv2"} and drains.values()["hv2"].reason == "kernel update"
        await drains.close()
    finally:
        await nc.close()


async def test_restore_is_refused_while_a_coordinator_leads(nats_server, tmp_path):
    nc = await connect_as(nats_server.url, "c-test", Role.COORDINATOR)
    try:
        js = nc.jetstream()
        await SessionStore.open(js)
        file = tmp_path / "ferry.backup"
        assert _admin(nats_server, "backup", str(file)).returncode == 0
        leader = await open_bucket(js, LEADER_BUCKET, "lease")
        lease = Lease(holder="coord-1", instance="i", term=7, since=time.time(), renewed_at=time.time(), lease_seconds=4.0)
        await leader.kv.put(LEASE_KEY, msgspec.json.encode(lease))
        refused = _admin(nats_server, "restore", str(file))
        assert refused.returncode == 1
        assert refused.stderr.startswith("ferry: conflict: coordinator coord-1 renewed the leader lease")
        assert _admin(nats_server, "restore", str(file), "--force").returncode == 0
    finally:
        await nc.close()


def test_a_file_that_is_no_backup_is_a_clear_error(nats_server, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("hello")
    result = _admin(nats_server, "restore", str(file))
    assert result.returncode == 1 and result.stderr.startswith("ferry: bad_request: ") and "Traceback" not in result.stderr
