"""The session shell as a reconciler, on in-memory fakes of its ports: a record
left in any state by a coordinator that died is adopted and driven to the end,
bus faults are retried, and a VM is never started twice or lost track of."""

import asyncio
from dataclasses import dataclass, field

import msgspec
import pytest

from ferry.coordinator.sessions import SessionManager
from ferry.coordinator.sessions.ports import Clock
from ferry.proto.agent import JobReport, JobRole, Offer, SessionResult
from ferry.proto.api import MigrateRequest
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import VmState
from ferry.proto.session import Demand, MigrateOptions, Session, SessionCode, SessionState, Transition
from tests.support.fake_ports import FakeAgents, FakeClock, FakeHost, MemoryClaims, MemoryStore

S = SessionState
VM = "web.prod-1"


@dataclass
class World:
    clock: FakeClock
    agents: FakeAgents
    store: MemoryStore
    claims: MemoryClaims
    manager: SessionManager
    events: list = field(default_factory=list)

    @property
    def hv1(self) -> FakeHost:
        return self.agents.hosts["hv1"]

    @property
    def hv2(self) -> FakeHost:
        return self.agents.hosts["hv2"]

    def where(self) -> list[str]:
        return [h.name for h in self.agents.hosts.values() if h.vms.get(VM) == VmState.RUNNING]


def world(*, job_turns: int = 2) -> World:
    clock = FakeClock()
    agents = FakeAgents(clock, FakeHost("hv1", vms={VM: VmState.RUNNING}), FakeHost("hv2"), job_turns=job_turns)
    store, claims = MemoryStore(), MemoryClaims()
    events: list = []

    async def emit(batch):
        events.extend(batch)

    manager = SessionManager(
        store, claims, agents, agents.views, emit, clock=Clock(wall=clock.wall, monotonic=clock.monotonic, sleep=clock.sleep)
    )
    return World(clock, agents, store, claims, manager, events)


def record(w: World, state: SessionState, **changes) -> Session:
    """A record as a coordinator that died left it (its claim still held)."""
    now = w.clock.now - 5
    history = [Transition(at=now - 2, state=S.QUEUED)]
    if state != S.QUEUED:
        history += [Transition(at=now - 1, state=S.PREPARING)]
    if state in (S.MIGRATING, S.POSTCOPY):
        history += [Transition(at=now, state=state)]
    session = Session(
        id="s1", vm=VM, source="hv1", dest=None if state == S.QUEUED else "hv2", options=MigrateOptions(),
        state=state, created_at=now - 2, updated_at=now, history=history, demand=Demand(vcpus=1, memory_mib=256),
    )
    session = msgspec.structs.replace(session, **changes)
    w.store.put(session)
    w.claims.holders[VM] = session.id
    return session


def running_job(w: World) -> None:
    w.hv1.jobs["s1"] = JobReport(session_id="s1", vm=VM, role=JobRole.SOURCE, job_running=True, started=True)
    w.hv2.vms[VM] = VmState.PAUSED


def offer_held(w: World) -> None:
    w.hv2.offers["s1"] = Offer(session_id="s1", host="hv2", peer_uri="qemu+tls://hv2/system")


async def drive(w: World, *, turns: int = 5000) -> Session:
    """Adopt what the store holds and run until every session has ended and no driver runs."""
    await w.manager.adopt()
    runner = asyncio.create_task(w.manager.run())
    try:
        for _ in range(turns):
            await asyncio.sleep(0)
            sessions = await w.store.all()
            if sessions and all(s.state.terminal for s in sessions) and not w.manager._driver._tasks:
                break
        else:
            pytest.fail(f"sessions did not end: {[(s.id, str(s.state)) for s in await w.store.all()]}")
    finally:
        runner.cancel()
        await w.manager.close()
    return (await w.store.all())[-1]


# ----- adoption: every state a dead coordinator can leave -----


ADOPTION = [
    # (name, state the record was left in, what the hosts hold, how it must end, migrate requests sent)
    ("queued: admitted and moved", S.QUEUED, [], S.COMPLETED, 1),
    ("preparing, nothing held yet: prepared and moved", S.PREPARING, [], S.COMPLETED, 1),
    ("preparing, offer held: moved with that offer", S.PREPARING, [offer_held], S.COMPLETED, 1),
    ("migrating, job running: followed, never started again", S.MIGRATING, [offer_held, running_job], S.COMPLETED, 0),
    ("migrating, request never reached the source: asked again once", S.MIGRATING, [offer_held], S.COMPLETED, 1),
]


@pytest.mark.parametrize("name, state, setup, ends, requests", ADOPTION, ids=[row[0] for row in ADOPTION])
async def test_an_adopted_session_reaches_its_end(name, state, setup, ends, requests):
    w = world()
    record(w, state)
    for prepare in setup:
        prepare(w)
    session = await drive(w)
    assert session.state == ends, session.reason
    assert len(w.hv1.migrate_requests) == requests
    assert w.where() == ["hv2"]
    assert VM not in w.claims.holders, "the VM can be moved again at once"


async def test_a_job_that_finished_while_nobody_watched_is_committed_from_the_journal():
    w = world()
    record(w, S.MIGRATING)
    running_job(w)
    w.agents.finish("s1", "hv1", "hv2", ok=True)
    session = await drive(w)
    assert session.state == S.COMPLETED and w.hv1.migrate_requests == []
    assert session.outcome is not None and session.outcome.downtime_ms == 20


async def test_a_source_that_lost_its_journal_still_commits_where_the_guest_runs():
    w = world()
    record(w, S.MIGRATING)
    del w.hv1.vms[VM]
    w.hv2.vms[VM] = VmState.RUNNING
    session = await drive(w)
    assert session.state == S.COMPLETED and w.hv1.migrate_requests == []


async def test_a_job_that_failed_while_nobody_watched_rolls_back_with_the_guest_on_its_source():
    w = world()
    record(w, S.MIGRATING)
    offer_held(w)
    running_job(w)
    w.agents.finish("s1", "hv1", "hv2", ok=False)
    session = await drive(w)
    assert session.state == S.FAILED and session.code == "migration_failed"
    assert w.where() == ["hv1"] and w.hv2.rollbacks == ["s1"] and "s1" not in w.hv2.offers
    assert VM not in w.claims.holders


async def test_a_silent_source_is_waited_for_and_the_move_completes_when_it_answers():
    w = world()
    record(w, S.MIGRATING)
    offer_held(w)
    running_job(w)
    w.hv1.answering = False

    async def back_after_a_while():
        while w.clock.now < 1_000_000.0 + 30:
            await asyncio.sleep(0)
        w.hv1.answering = True

    helper = asyncio.create_task(back_after_a_while())
    session = await drive(w)
    await helper
    assert session.state == S.COMPLETED and w.hv1.migrate_requests == []


async def test_nobody_answering_ends_not_confirmed_by_the_deadline_and_a_later_look_settles_it():
    w = world()
    record(w, S.MIGRATING)
    running_job(w)
    w.hv1.answering = w.hv2.answering = False
    session = await drive(w)
    assert session.state == S.FAILED and session.code == SessionCode.NOT_CONFIRMED
    assert "hv1 does not answer" in session.reason
    assert w.claims.holders.get(VM) == "s1", "a VM nobody can place stays claimed"
    assert w.hv2.rollbacks == [], "nothing is removed anywhere"
    # The hosts come back; the job had finished meanwhile.
    w.hv1.answering = w.hv2.answering = True
    w.agents.finish("s1", "hv1", "hv2", ok=True)
    await w.manager._driver.settle_unconfirmed()
    settled = w.store["s1"]
    assert settled.state == S.COMPLETED and "settled later" in settled.reason
    assert VM not in w.claims.holders


async def test_kv_writes_that_fail_during_an_outage_are_retried():
    w = world()
    record(w, S.PREPARING)
    w.store.fail_writes = 4
    session = await drive(w)
    assert session.state == S.COMPLETED and len(w.hv1.migrate_requests) == 1


async def test_a_destination_agent_restarting_at_commit_time_does_not_fail_a_good_move():
    w = world()
    record(w, S.MIGRATING)
    offer_held(w)
    running_job(w)
    w.hv2.commit_silences = 25  # more than one commit round
    session = await drive(w)
    assert session.state == S.COMPLETED, session.reason


async def test_a_fresh_session_runs_start_to_end_with_one_migrate_request():
    w = world()
    await w.manager.adopt()
    runner = asyncio.create_task(w.manager.run())
    try:
        session = await w.manager.start(MigrateRequest(vm=VM))
        assert w.claims.holders[VM] == session.id
        for _ in range(5000):
            await asyncio.sleep(0)
            if w.store[session.id].state.terminal and not w.manager._driver._tasks:
                break
    finally:
        runner.cancel()
        await w.manager.close()
    ended = w.store[session.id]
    assert ended.state == S.COMPLETED
    assert [t.state for t in ended.history] == ["queued", "preparing", "migrating", "completed"]
    assert len(w.hv1.migrate_requests) == 1 and w.where() == ["hv2"]


async def test_a_result_published_by_the_source_is_enough_to_commit():
    w = world(job_turns=10_000)
    record(w, S.MIGRATING)
    offer_held(w)
    running_job(w)

    async def publish_the_result():
        while "s1" not in w.manager._driver._tasks:
            await asyncio.sleep(0)
        w.agents.finish("s1", "hv1", "hv2", ok=True)
        result = w.hv1.jobs["s1"].result
        assert isinstance(result, SessionResult)
        w.manager._driver.on_result(result)

    helper = asyncio.create_task(publish_the_result())
    session = await drive(w)
    await helper
    assert session.state == S.COMPLETED


async def test_a_queued_session_past_its_deadline_ends_timed_out():
    w = world()
    record(w, S.QUEUED, history=[Transition(at=w.clock.now - 7 * 3600, state=S.QUEUED)], created_at=w.clock.now - 7 * 3600)
    session = await drive(w)
    assert session.state == S.FAILED and session.code == SessionCode.TIMED_OUT
    assert w.hv1.migrate_requests == [] and VM not in w.claims.holders


async def test_a_source_down_at_commit_time_is_asked_to_clean_up_again_later():
    w = world()
    record(w, S.MIGRATING)
    offer_held(w)
    running_job(w)
    w.hv1.commit_silences = 1  # its agent restarts just as the destination confirmed
    session = await drive(w)
    assert session.state == S.COMPLETED
    assert w.agents.calls.count(("hv1", "commit")) == 1
    await w.manager._driver.retry_cleanups()
    assert w.agents.calls.count(("hv1", "commit")) == 2
    await w.manager._driver.retry_cleanups()
    assert w.agents.calls.count(("hv1", "commit")) == 2, "once it cleaned up, it is not asked again"


async def test_a_settling_look_that_cannot_confirm_yet_looks_again_later():
    w = world()
    record(w, S.MIGRATING)
    running_job(w)
    w.hv1.answering = w.hv2.answering = False
    assert (await drive(w)).code == SessionCode.NOT_CONFIRMED
    w.hv1.answering = w.hv2.answering = True
    w.agents.finish("s1", "hv1", "hv2", ok=True)
    w.hv2.commit_silences = 10  # the destination's agent does not confirm this time
    await w.manager._driver.settle_unconfirmed()
    assert w.store["s1"].code == SessionCode.NOT_CONFIRMED and w.claims.holders.get(VM) == "s1"
    await w.manager._driver.settle_unconfirmed()
    assert w.store["s1"].state == S.COMPLETED and VM not in w.claims.holders


# ----- claims whose release failed -----


async def test_a_claim_whose_release_failed_is_released_when_tried_again():
    w = world()
    record(w, S.MIGRATING)
    offer_held(w)
    running_job(w)
    w.claims.failing_releases = 1  # KV away at the end of the session
    session = await drive(w)
    assert session.state == S.COMPLETED and w.claims.holders.get(VM) == "s1"
    await w.manager._book.retry_releases()
    assert VM not in w.claims.holders


async def test_adoption_frees_a_claim_left_by_a_session_that_ended():
    w = world()
    ended = record(w, S.MIGRATING)
    w.store.put(msgspec.structs.replace(ended, state=S.COMPLETED, dest="hv2"))
    assert w.claims.holders[VM] == "s1", "the coordinator died between the end and the release"
    await w.manager.adopt()
    assert VM not in w.claims.holders
    await w.manager.close()


# ----- TLS and peers: the source dials only what its destination announced -----


async def run_fresh(w: World, request: MigrateRequest) -> Session:
    """Start a session as `ferry migrate` does and run it to its end."""
    await w.manager.adopt()
    runner = asyncio.create_task(w.manager.run())
    try:
        session = await w.manager.start(request)
        for _ in range(5000):
            await asyncio.sleep(0)
            if w.store[session.id].state.terminal and not w.manager._driver._tasks:
                break
    finally:
        runner.cancel()
        await w.manager.close()
    return w.store[session.id]


async def test_a_completed_session_records_the_encryption_the_source_used():
    w = world()
    ended = await run_fresh(w, MigrateRequest(vm=VM))
    assert ended.state == S.COMPLETED and ended.encryption == "tls"
    (sent,) = w.hv1.migrate_requests
    assert sent.peer_uri == "qemu+tls://hv2/system" and sent.options.tls


async def test_an_offer_naming_a_peer_its_host_did_not_announce_is_never_sent_to_the_source():
    w = world()
    # Whoever answered hv2's `prepare` named its own address; hv2's heartbeat says otherwise.
    w.hv2.announced = "qemu+tls://hv2.example.net/system"
    ended = await run_fresh(w, MigrateRequest(vm=VM))
    assert ended.state == S.FAILED and ended.code == SessionCode.PEER_MISMATCH
    assert "hv2 offered qemu+tls://hv2/system as its peer URI, but its heartbeat announces" in ended.reason
    assert w.hv1.migrate_requests == [] and w.hv2.rollbacks == [ended.id]
    assert w.where() == ["hv1"] and VM not in w.claims.holders
    assert ended.encryption == ""


@pytest.mark.parametrize(
    "code, message",
    [
        (ErrorCode.TLS_REQUIRED, "web.prod-1 is not migrated without TLS: ... set require_tls = false"),
        (ErrorCode.PEER_REFUSED, "web.prod-1 is not sent to qemu+tls://hv2/system: its scheme ..."),
    ],
)
async def test_a_source_refusing_on_its_transport_rules_ends_the_session_with_its_code(code, message):
    w = world()
    w.hv1.refuses_migrate = FerryError(code, message)
    ended = await run_fresh(w, MigrateRequest(vm=VM, options=MigrateOptions(tls=code != ErrorCode.TLS_REQUIRED)))
    assert ended.state == S.FAILED and ended.code == str(code)
    assert ended.reason == f"hv1 did not start the migration: {message}"
    assert w.hv2.rollbacks == [ended.id] and w.where() == ["hv1"] and VM not in w.claims.holders
