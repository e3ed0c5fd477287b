"""History through real processes and a real nats-server: events read back from
the event stream (`ferry events`), finished sessions archived out of the hot
bucket and still found, and `ferry sessions` in pages that fit a NATS message."""

import json
import subprocess
import time

import msgspec
import nats.js.errors
import pytest

from ferry.coordinator.session_archive import SessionArchive
from ferry.coordinator.session_store import SessionStore
from ferry.proto.history import ARCHIVE_STREAM, archive_subject
from ferry.proto.session import MigrateOptions, Session, SessionState, Transition
from ferry.runtime.identity import Role
from tests.support.cluster import connect_client, wait_hosts_up
from tests.support.ferry_cli import CliResult, ferry
from tests.support.processes import coordinator_toml, script, simulated_agent_toml
from tests.support.secured import cli_args, connect_as
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def history_toml(nats_url, name: str = "", **history) -> str:
    body = "".join(f"{key} = {value}\n" for key, value in history.items())
    return coordinator_toml(nats_url, name=name) + "[drain]\nretry_delay = 0.5\n" + ("[history]\n" + body if body else "")


def as_viewer(url, *args: str) -> CliResult:
    proc = subprocess.run(
        [script("ferry"), *cli_args(url, "vera", Role.VIEWER), *args], capture_output=True, text=True, timeout=60
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def events_json(url) -> list[dict]:
    listed = ferry(url, "events", "--since", "10m", "--json")
    assert listed.code == 0, listed.stderr
    return json.loads(listed.stdout)


async def test_a_drains_events_are_listed_in_order_and_survive_the_coordinator(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", history_toml(nats_server.url, name="c1"))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, vms=[("g0", 1, 512), ("g1", 1, 512)], migration_mib_per_s=1024))
    daemons.start("a", "ferry-agent", simulated_agent_toml("a", nats_server.url, tmp_path, migration_mib_per_s=1024))
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "a"])
        run = ferry(nats_server.url, "drain", "src", "--wait")
        assert run.code == 0, run.stdout + run.stderr

        async def drain_finished():
            listed = events_json(nats_server.url)
            return listed if any(r["event"]["type"] == "drain_finished" for r in listed) else None

        listed = await eventually(drain_finished, timeout=10, what="drain_finished listed")
        seqs = [r["seq"] for r in listed]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        kinds = [r["event"]["type"] for r in listed]
        drain_kinds = [k for k in kinds if k in ("drain_started", "vm_placed", "drain_finished")]
        assert drain_kinds == ["drain_started", "vm_placed", "vm_placed", "drain_finished"]
        completed = [r for r in listed if r["event"]["type"] == "session_changed" and r["event"]["state"] == "completed"]
        assert {r["event"]["vm"] for r in completed} == {"g0", "g1"}
        assert kinds.index("drain_started") < min(listed.index(r) for r in completed) < kinds.index("drain_finished")
        assert all(r["event"]["at"] > 0 and r["subject"] for r in listed)

        # Filters: one VM's events only; a host's.
        g0 = ferry(nats_server.url, "events", "--since", "10m", "--vm", "g0", "--json")
        assert g0.code == 0, g0.stderr
        assert {r["event"].get("vm") for r in json.loads(g0.stdout)} == {"g0"}
        for_a = json.loads(ferry(nats_server.url, "events", "--since", "10m", "--host", "a", "--json").stdout)
        assert for_a and all("a" in (r["event"].get("host"), r["event"].get("dest"), r["event"].get("source")) for r in for_a)

        # A viewer may read them, in lines for people.
        seen = as_viewer(nats_server.url, "events", "--since", "10m")
        assert seen.code == 0, seen.stderr
        assert "drain_started" in seen.stdout and "vm_placed" in seen.stdout and "src/g0" in seen.stdout

        bad = ferry(nats_server.url, "events", "--since", "yesterday")
        assert bad.code == 1 and "ferry: bad_request: --since 'yesterday'" in bad.stderr

    # Another coordinator after this one dies still lists them: they are in the stream, not in a process.
    daemons.kill("coordinator")
    daemons.start("coordinator2", "ferry-coordinator", history_toml(nats_server.url, name="c2"))

    async def listed_again():
        found = events_json(nats_server.url)
        return found if any(r["event"]["type"] == "leader_elected" and r["event"]["leader"] == "c2" for r in found) else None

    again = await eventually(listed_again, timeout=20, what="the new leader's events listed")
    assert [r for r in again if r["seq"] <= listed[-1]["seq"]] == listed


async def test_finished_sessions_leave_the_hot_bucket_and_are_still_found(daemons, nats_server, tmp_path):
    daemons.start("coordinator", "ferry-coordinator", history_toml(nats_server.url, keep_finished=1.0, archive_every=0.3))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, vms=[("g0", 1, 512)], migration_mib_per_s=1024))
    daemons.start("a", "ferry-agent", simulated_agent_toml("a", nats_server.url, tmp_path, migration_mib_per_s=1024))
    raw = await connect_as(nats_server.url, "coordinator", Role.COORDINATOR)
    try:
        async with await connect_client(nats_server) as client:
            await wait_hosts_up(client, ["src", "a"])
            moved = ferry(nats_server.url, "migrate", "g0", "--to", "a", "--wait", "--json")
            assert moved.code == 0, moved.stderr
            session = moved.session()
            assert session.state == SessionState.COMPLETED
            js = raw.jetstream()
            hot = await js.key_value("ferry_sessions")

            async def archived():
                try:
                    await hot.get(session.id)
                    return False
                except nats.js.errors.KeyNotFoundError:
                    return True

            await eventually(archived, timeout=15, what="the session out of the hot bucket")
            copy = await js.get_msg(ARCHIVE_STREAM, subject=archive_subject(session.id), direct=True)
            assert msgspec.json.decode(copy.data, type=Session).id == session.id
            # Its key is gone from the bucket's listing too (no delete marker left behind).
            state = (await js.stream_info("KV_ferry_sessions", subjects_filter="$KV.ferry_sessions.>")).state
            assert f"$KV.ferry_sessions.{session.id}" not in (state.subjects or {})

            shown = ferry(nats_server.url, "session", session.id, "--json")
            assert shown.code == 0, shown.stderr
            assert shown.session().id == session.id and shown.session().state == SessionState.COMPLETED
            listed = ferry(nats_server.url, "sessions", "--json")
            assert listed.code == 0, listed.stderr
            assert [s["id"] for s in json.loads(listed.stdout)] == [session.id]
            table = ferry(nats_server.url, "sessions", "--since", "1h")
            assert table.code == 0 and session.id in table.stdout
            assert ferry(nats_server.url, "sessions", "--since", "2030-01-01T00:00").stdout.strip() == "no sessions"
            missing = ferry(nats_server.url, "session", "zzzzzzzz")
            assert missing.code == 1 and "ferry: not_found: there is no session zzzzzzzz" in missing.stderr
            # The VM moves again: a new session, its own record.
            back = ferry(nats_server.url, "migrate", "g0", "--to", "src", "--wait", "--json")
            assert back.code == 0, back.stderr
            both = ferry(nats_server.url, "sessions", "--json")
            assert [s["id"] for s in json.loads(both.stdout)] == [session.id, back.session().id]
    finally:
        await raw.close()


def big_session(i: int, *, now: float) -> Session:
    """A finished session whose history makes it about 60 kB."""
    history = [Transition(at=now - 100 + t, state=SessionState.MIGRATING, reason=f"step {t} " + "x" * 300) for t in range(180)]
    return Session(
        id=f"big{i:05}", vm=f"vm-{i}", source="hv1", options=MigrateOptions(), state=SessionState.COMPLETED,
        created_at=now - 200 + i, updated_at=now - 100 + i, dest="hv2", history=history,
    )


async def test_a_page_of_big_sessions_stays_under_max_payload_and_pages_reach_them_all(daemons, nats_server):
    daemons.start("coordinator", "ferry-coordinator", history_toml(nats_server.url))
    raw = await connect_as(nats_server.url, "coordinator", Role.COORDINATOR)
    try:
        async with await connect_client(nats_server) as client:
            await eventually(client.status, timeout=15, what="the coordinator answering")
            js = raw.jetstream()

            async def streams_made():
                return await js.stream_info(ARCHIVE_STREAM)

            await eventually(streams_made, timeout=10, what="the archive stream")
            store = await SessionStore.open(js)
            archive = SessionArchive(js)
            now = time.time()
            sessions = [big_session(i, now=now) for i in range(60)]
            assert len(msgspec.json.encode(sessions[0])) > 50_000
            for s in sessions[:40]:
                await archive.put(s, 1)
            for s in sessions[40:]:
                await store.create(s)

            pages, before = [], ""
            while True:
                args = ["sessions", "--limit", "1000", "--json", *(["--before", before] if before else [])]
                listed = ferry(nats_server.url, *args)
                assert listed.code == 0, listed.stderr
                assert len(listed.stdout) < 1024 * 1024
                pages.append([s["id"] for s in json.loads(listed.stdout)])
                if "older sessions remain" not in listed.stderr:
                    break
                before = listed.stderr.split("--before ")[1].split()[0]
            assert len(pages) > 2 and all(0 < len(p) < 20 for p in pages)
            ids = [i for page in reversed(pages) for i in page]
            # Newest first across pages: the hot ones by creation, then the archive backwards; each once.
            assert sorted(ids) == sorted(s.id for s in sessions) and len(set(ids)) == 60
            assert ids[-20:] == [s.id for s in sessions[40:]]
            assert ids[:40] == [s.id for s in sessions[:40]]

            table = ferry(nats_server.url, "sessions", "--limit", "5")
            assert table.code == 0 and "older sessions remain: ferry sessions --before h." in table.stdout
            assert "big00059" in table.stdout.splitlines()[-2]  # the newest at the bottom of the table
    finally:
        await raw.close()
