"""An agent restarted mid-session: it follows what libvirt kept running, never
starts a job twice, and a rollback removes only what its own session made."""

import asyncio
import time

import msgspec
import pytest

from ferry.agent.config import AgentConfig, MigrationSettings
from ferry.agent.destination import Destination
from ferry.agent.jobs import Jobs
from ferry.agent.journal import Journal, JournalEntry
from ferry.agent.source import Source
from ferry.proto import subjects
from ferry.proto.agent import (
    BandwidthRequest,
    DiskInfo,
    JobRole,
    JobsRequest,
    MigrateRequest,
    Offer,
    PrepareRequest,
    SessionProgress,
    SessionRef,
    SessionResult,
    SessionUpdate,
    VmDescription,
    VmPlace,
)
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import Versions, VmState
from ferry.proto.session import MigrateOptions, StorageMode
from tests.support.fake_hypervisor import GIB, FakeHypervisor, job_sample
from tests.support.waiting import eventually

HOST = "hv1"
SID = "sess01"
REQUEST = MigrateRequest(session_id=SID, vm="web", dest="hv2", peer_uri="qemu+tls://hv2/system", copy_disks=["vda"])


class Published:
    """Stands in for NATS: what the agent published, decoded."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, SessionUpdate]] = []
        self._decoder = msgspec.json.Decoder(SessionUpdate)

    async def __call__(self, subject: str, payload: bytes) -> None:
        self.messages.append((subject, self._decoder.decode(payload)))

    def results(self) -> list[SessionResult]:
        return [m for _, m in self.messages if isinstance(m, SessionResult)]

    def progress(self) -> list[SessionProgress]:
        return [m for _, m in self.messages if isinstance(m, SessionProgress)]


@pytest.fixture
def config(tmp_path) -> AgentConfig:
    return AgentConfig(
        host=HOST, state_dir=str(tmp_path / "state"), migration=MigrationSettings(progress_interval=0.01, lease_seconds=30)
    )


@pytest.fixture
async def journal(config) -> Journal:
    j = Journal(config.state_dir)
    await j.open()
    return j


def running_entry(**changes) -> JournalEntry:
    """What the previous agent journaled before it asked libvirt to migrate."""
    entry = JournalEntry(
        session_id=SID, vm="web", role=JobRole.SOURCE, request=REQUEST,
        copied_paths=["/img/web.qcow2"], started_at=time.time() - 5,
    )
    return msgspec.structs.replace(entry, **changes)


async def restarted_source(config, journal, hv, published=None) -> Source:
    source = Source(config, hv, published or Published(), journal)
    await source.recover(await journal.load())
    return source


async def the_result(published: Published) -> SessionResult:
    (result,) = await eventually(lambda: _async(published.results()), timeout=5, every=0.01, what="a result")
    return result


async def _async(value):
    return value


async def journaled(journal: Journal, session_id: str = SID) -> JournalEntry | None:
    return next((e for e in await journal.load() if e.session_id == session_id), None)


# ----- source -----


async def test_a_restarted_source_follows_the_running_job_and_reports_ok_when_the_domain_leaves(config, journal):
    await journal.write(running_entry())
    hv = FakeHypervisor(vms={"web": VmState.RUNNING}, jobs={"web": job_sample(processed=GIB // 4)})
    published = Published()
    source = await restarted_source(config, journal, hv, published)
    assert source.in_flight == 1
    assert (await source.migrate(REQUEST)).running  # the same session: where it stands
    await eventually(lambda: _async(published.progress()), timeout=5, every=0.01, what="progress of the followed job")
    assert published.messages[0][0] == subjects.host_session(HOST, SID)

    hv.end_job("web", moved=True)
    result = await the_result(published)
    assert result.ok and not result.aborted and result.outcome is not None
    assert result.last_progress is not None and result.last_progress.data_processed == GIB // 4
    assert hv.migrated == []  # followed, never started again
    assert (await journaled(journal)).result == result
    state = await source.migrate(REQUEST)
    assert not state.running and state.result == result


async def test_a_follower_outlives_a_call_that_fails_as_the_domain_leaves(config, journal):
    # Seen in the lab: jobStats on a domain that a finishing migration had just
    # undefined raised a libvirt error, and the follower died without a result.
    class Flaky(FakeHypervisor):
        failures = 3

        async def job_stats(self, name):
            if self.failures:
                self.failures -= 1
                raise RuntimeError("Domain not found: no domain with matching uuid")
            return await super().job_stats(name)

    await journal.write(running_entry())
    hv = Flaky(vms={"web": VmState.RUNNING}, jobs={"web": job_sample()})
    published = Published()
    await restarted_source(config, journal, hv, published)
    hv.end_job("web", moved=True)
    result = await the_result(published)
    assert result.ok and hv.migrated == []


async def test_a_commit_that_arrives_while_a_followed_job_is_concluded_still_removes_the_copies(config, journal):
    # Seen in the chaos bench: the coordinator saw the VM running on the
    # destination and committed before the restarted source had concluded its
    # followed job; the commit removed nothing and the copied image stayed.
    await journal.write(running_entry())
    hv = FakeHypervisor(vms={"web": VmState.RUNNING}, jobs={"web": job_sample()}, images={"/img/web.qcow2"})
    source = await restarted_source(config, journal, hv, Published())
    hv.end_job("web", moved=True)
    reply = await source.commit(SessionRef(session_id=SID, vm="web"))
    assert reply.removed == ["/img/web.qcow2"]


async def test_a_commit_removes_a_shut_off_definition_libvirt_left_after_the_agent_died(config, journal):
    # Seen in CI: the source agent was killed mid-job; libvirt finished the move
    # but left the source domain defined and shut off (no UNDEFINE_SOURCE).
    await journal.write(running_entry())
    hv = FakeHypervisor(vms={"web": VmState.RUNNING}, jobs={"web": job_sample()}, images={"/img/web.qcow2"})
    published = Published()
    source = await restarted_source(config, journal, hv, published)
    hv.jobs.pop("web")
    hv.vms["web"] = VmState.SHUTOFF
    assert (await the_result(published)).ok
    reply = await source.commit(SessionRef(session_id=SID, vm="web"))
    assert hv.undefined == ["web"] and "web" not in hv.vms
    assert reply.removed == ["/img/web.qcow2", "domain web"]


async def test_a_commit_never_undefines_a_vm_after_a_failed_job(config, journal):
    failed = SessionResult(session_id=SID, vm="web", host=HOST, at=time.time(), ok=False, code="migration_failed")
    await journal.write(running_entry(result=failed))
    hv = FakeHypervisor(vms={"web": VmState.SHUTOFF})
    source = await restarted_source(config, journal, hv)
    await source.commit(SessionRef(session_id=SID, vm="web"))
    assert hv.undefined == [] and hv.vms == {"web": VmState.SHUTOFF}


async def test_a_followed_job_that_ends_with_the_vm_still_here_failed(config, journal):
    await journal.write(running_entry())
    hv = FakeHypervisor(vms={"web": VmState.RUNNING}, jobs={"web": job_sample()})
    published = Published()
    await restarted_source(config, journal, hv, published)
    await asyncio.sleep(0.05)
    hv.end_job("web", moved=False)
    result = await the_result(published)
    assert not result.ok and not result.aborted and result.code == "migration_failed"
    assert "not watching" in result.reason and "web still runs on hv1" in result.reason
    assert (await journaled(journal)).result == result


@pytest.mark.parametrize(
    "state, ok", [(None, True), (VmState.SHUTOFF, True), (VmState.RUNNING, False), (VmState.PAUSED, False)]
)
async def test_a_job_that_ended_while_no_agent_watched_is_judged_at_once(config, journal, state, ok):
    await journal.write(running_entry())
    hv = FakeHypervisor(vms={} if state is None else {"web": state})
    published = Published()
    source = await restarted_source(config, journal, hv, published)
    (result,) = published.results()  # decided during recover, before any verb is served
    assert result.ok is ok and source.in_flight == 0
    assert (await journaled(journal)).result == result


async def test_an_abort_journaled_before_the_restart_ends_it_cancelled(config, journal):
    await journal.write(running_entry(abort_requested=True))
    published = Published()
    await restarted_source(config, journal, FakeHypervisor(vms={"web": VmState.RUNNING}), published)
    (result,) = published.results()
    assert result.aborted and result.code == "cancelled" and not result.ok


async def test_abort_and_bandwidth_work_on_a_followed_job(config, journal):
    await journal.write(running_entry())
    hv = FakeHypervisor(vms={"web": VmState.RUNNING}, jobs={"web": job_sample()})
    published = Published()
    source = await restarted_source(config, journal, hv, published)
    assert (await source.set_bandwidth(BandwidthRequest(session_id=SID, bandwidth_mib=50))).bandwidth_mib == 50
    assert hv.bandwidths == [("web", 50)]
    reply = await source.abort(SessionRef(session_id=SID, vm="web"))
    assert reply.aborted and "web" in hv.aborted
    assert (await journaled(journal)).abort_requested  # a restart now would judge it cancelled
    hv.end_job("web", moved=False)
    result = await the_result(published)
    assert result.aborted and result.code == "cancelled"


async def test_a_repeated_migrate_after_a_restart_returns_the_journaled_state(config, journal):
    earlier = SessionResult(session_id=SID, vm="web", host=HOST, at=time.time() - 60, ok=False, code="migration_failed", reason="x")
    await journal.write(running_entry(result=earlier))
    hv = FakeHypervisor(vms={"web": VmState.RUNNING})
    published = Published()
    source = await restarted_source(config, journal, hv, published)
    state = await source.migrate(REQUEST)
    assert not state.running and state.result == earlier
    assert hv.migrated == [] and published.messages == []  # nothing started, nothing re-published


async def test_stale_finished_entries_are_pruned_at_start(config, journal):
    old = SessionResult(session_id=SID, vm="web", host=HOST, at=time.time() - 7200, ok=True)
    await journal.write(running_entry(result=old))
    source = await restarted_source(config, journal, FakeHypervisor(vms={"web": VmState.RUNNING}))
    assert await journal.load() == [] and source.in_flight == 0


async def test_migrate_is_refused_when_libvirt_already_runs_an_unknown_job(config, journal):
    hv = FakeHypervisor(vms={"web": VmState.RUNNING}, jobs={"web": job_sample()})
    source = Source(config, hv, Published(), journal)
    with pytest.raises(FerryError) as refused:
        await source.migrate(REQUEST)
    assert refused.value.code == ErrorCode.CONFLICT and "already runs a job on web" in refused.value.message
    assert hv.migrated == [] and await journal.load() == []


async def test_a_new_migration_is_journaled_before_libvirt_is_asked(config, journal):
    seen: list[JournalEntry | None] = []

    class Watching(FakeHypervisor):
        async def migrate(self, name, plan):
            seen.append(await journaled(journal))
            await super().migrate(name, plan)

    hv = Watching(vms={"web": VmState.RUNNING}, disks={"web": [DiskInfo(target="vda", path="/img/web.qcow2", local=True)]})
    published = Published()
    source = Source(config, hv, published, journal)
    await source.migrate(REQUEST)
    result = await the_result(published)
    assert seen[0] is not None and seen[0].request == REQUEST and seen[0].copied_paths == ["/img/web.qcow2"]
    assert seen[0].result is None
    assert (await journaled(journal)).result == result and not result.ok


async def test_source_commit_removes_the_copied_images_and_then_the_entry(config, journal):
    done = SessionResult(session_id=SID, vm="web", host=HOST, at=time.time(), ok=True)
    await journal.write(running_entry(result=done))
    hv = FakeHypervisor(images={"/img/web.qcow2", "/img/other.qcow2"})
    source = await restarted_source(config, journal, hv)
    reply = await source.commit(SessionRef(session_id=SID, vm="web"))
    assert reply.removed == ["/img/web.qcow2"] and hv.images == {"/img/other.qcow2"}
    assert await journal.load() == []
    assert (await source.migrate(REQUEST)).result == done  # still remembered in memory


# ----- destination -----

DISKS = [
    DiskInfo(target="vda", path="/img/web-a.qcow2", local=True, capacity_bytes=GIB),
    DiskInfo(target="vdb", path="/img/web-b.qcow2", local=True, capacity_bytes=GIB),
]


def prepare_request(session_id: str = SID, vm: str = "web", disks=DISKS) -> PrepareRequest:
    return PrepareRequest(
        session_id=session_id,
        vm=VmDescription(name=vm, uuid=f"u-{vm}", vcpus=2, memory_mib=1024, arch="x86_64", disks=list(disks)),
        source="hv0",
        source_versions=Versions(),
        options=MigrateOptions(storage=StorageMode.COPY),
    )


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def prepared_destination(config, journal, hv, clock, *requests) -> Destination:
    destination = Destination(config, hv, clock, journal)
    for request in requests:
        assert isinstance(await destination.prepare(request), Offer)
    return destination


async def restarted_destination(config, journal, hv, clock) -> Destination:
    destination = Destination(config, hv, clock, journal)
    await destination.recover(await journal.load())
    return destination


async def test_a_restarted_destination_keeps_its_reservation_and_images(config, journal):
    hv, clock = FakeHypervisor(), Clock()
    first = await prepared_destination(config, journal, hv, clock, prepare_request())
    offer = first.reservations.get(SID).offer
    assert hv.images == {"/img/web-a.qcow2", "/img/web-b.qcow2"}

    clock.now += 100  # the old lease would have lapsed meanwhile
    again = await restarted_destination(config, journal, hv, clock)
    held = again.reservations.get(SID)
    assert held is not None and held.offer == offer and held.expires_at == clock.now + 30
    assert held.created_disks == ("/img/web-a.qcow2", "/img/web-b.qcow2") and held.memory_mib == 1024
    assert await again.prepare(prepare_request()) == offer  # the same answer, no new images
    assert hv.removed == []


async def test_images_are_journaled_as_each_is_created(config, journal):
    seen: list[list[str]] = []

    class Watching(FakeHypervisor):
        async def create_disk(self, disk):
            entry = await journaled(journal)
            seen.append([] if entry is None else list(entry.created_disks))
            return await super().create_disk(disk)

    await prepared_destination(config, journal, Watching(), Clock(), prepare_request())
    assert seen == [[], ["/img/web-a.qcow2"]]


async def test_images_of_a_prepare_that_never_offered_are_removed_at_start(config, journal):
    # Killed after the first image: no offer left the host, so nothing can use it.
    description = prepare_request().vm
    await journal.write(JournalEntry(
        session_id=SID, vm="web", role=JobRole.DESTINATION, description=description, created_disks=["/img/web-a.qcow2"],
    ))
    hv = FakeHypervisor(images={"/img/web-a.qcow2", "/img/web-b.qcow2"})  # b was there before
    destination = await restarted_destination(config, journal, hv, Clock())
    assert hv.images == {"/img/web-b.qcow2"} and destination.reservations.get(SID) is None
    assert await journal.load() == []


async def test_rollback_removes_only_what_that_session_made(config, journal):
    other = [DiskInfo(target="vda", path="/img/db.qcow2", local=True)]
    hv, clock = FakeHypervisor(images={"/img/keep.qcow2"}), Clock()
    await prepared_destination(config, journal, hv, clock, prepare_request(), prepare_request("sess02", "db", other))
    hv.vms = {"web": VmState.PAUSED, "db": VmState.PAUSED}  # both incoming domains, no job running
    destination = await restarted_destination(config, journal, hv, clock)

    reply = await destination.rollback(SessionRef(session_id=SID, vm="web"))
    assert sorted(reply.removed) == ["/img/web-a.qcow2", "/img/web-b.qcow2", "incoming domain web"]
    assert hv.images == {"/img/keep.qcow2", "/img/db.qcow2"} and hv.vms == {"db": VmState.PAUSED}
    assert [e.session_id for e in await journal.load()] == ["sess02"]
    assert destination.reservations.get(SID) is None and destination.reservations.get("sess02") is not None
    again = await destination.rollback(SessionRef(session_id=SID, vm="web"))  # idempotent: nothing left
    assert again.removed == []


async def test_rollback_refuses_while_an_incoming_job_runs(config, journal):
    hv, clock = FakeHypervisor(), Clock()
    await prepared_destination(config, journal, hv, clock, prepare_request())
    hv.vms, hv.jobs = {"web": VmState.PAUSED}, {"web": job_sample()}
    destination = await restarted_destination(config, journal, hv, clock)
    with pytest.raises(FerryError) as refused:
        await destination.rollback(SessionRef(session_id=SID, vm="web"))
    assert refused.value.code == ErrorCode.CONFLICT
    assert refused.value.message == "the migration of web is still running; abort it at the source"
    assert hv.destroyed == [] and hv.removed == [] and destination.reservations.get(SID) is not None
    assert await journaled(journal) is not None


async def test_rollback_of_an_unknown_session_removes_nothing(config, journal):
    hv, clock = FakeHypervisor(), Clock()
    await prepared_destination(config, journal, hv, clock, prepare_request())
    hv.vms = {"web": VmState.PAUSED}  # another session's incoming domain
    destination = await restarted_destination(config, journal, hv, clock)
    reply = await destination.rollback(SessionRef(session_id="nosuch1", vm="web"))
    assert reply.removed == [] and "no reservation for session nosuch1" in reply.message
    assert hv.destroyed == [] and hv.removed == [] and destination.reservations.get(SID) is not None


async def test_rollback_never_touches_a_vm_that_runs_here(config, journal):
    hv, clock = FakeHypervisor(), Clock()
    destination = await prepared_destination(config, journal, hv, clock, prepare_request())
    hv.vms = {"web": VmState.RUNNING}
    with pytest.raises(FerryError) as refused:
        await destination.rollback(SessionRef(session_id=SID, vm="web"))
    assert refused.value.code == ErrorCode.CONFLICT and hv.removed == []


async def test_a_recovered_lease_is_kept_while_the_domain_exists_and_rolled_back_after(config, journal):
    hv, clock = FakeHypervisor(), Clock()
    await prepared_destination(config, journal, hv, clock, prepare_request())
    hv.vms = {"web": VmState.PAUSED}
    destination = await restarted_destination(config, journal, hv, clock)
    clock.now += 31
    await destination.expire_leases()
    assert destination.reservations.get(SID) is not None and hv.removed == []  # the migration runs
    del hv.vms["web"]
    clock.now += 31
    await destination.expire_leases()
    assert destination.reservations.get(SID) is None and sorted(hv.removed) == ["/img/web-a.qcow2", "/img/web-b.qcow2"]
    assert await journal.load() == []


async def test_destination_commit_forgets_the_entry(config, journal):
    hv, clock = FakeHypervisor(), Clock()
    destination = await prepared_destination(config, journal, hv, clock, prepare_request())
    hv.vms = {"web": VmState.RUNNING}
    assert (await destination.commit(SessionRef(session_id=SID, vm="web"))).vm_running
    assert await journal.load() == [] and hv.removed == []


# ----- the jobs verb -----


async def test_the_jobs_verb_reports_sources_destinations_and_vms(config, journal):
    done = SessionResult(session_id="sess03", vm="db", host=HOST, at=time.time(), ok=True)
    await journal.write(running_entry())
    await journal.write(running_entry(session_id="sess03", vm="db", request=msgspec.structs.replace(REQUEST, session_id="sess03", vm="db"), result=done))
    hv = FakeHypervisor(vms={"web": VmState.RUNNING}, jobs={"web": job_sample()})
    published = Published()
    clock = Clock()
    source = await restarted_source(config, journal, hv, published)
    destination = await prepared_destination(config, journal, hv, clock, prepare_request("sess02", "app", DISKS[:1]))
    hv.vms["app"], hv.jobs["app"] = VmState.PAUSED, job_sample()  # the incoming migration began
    jobs = Jobs(HOST, hv, [source, destination])
    await eventually(lambda: _async(published.progress()), timeout=5, every=0.01, what="progress")

    reply = await jobs.answer(JobsRequest(vms=["web", "gone"]))
    assert reply.host == HOST and reply.vms == [VmPlace("web", VmState.RUNNING), VmPlace("gone", None)]
    by_id = {r.session_id: r for r in reply.jobs}
    assert set(by_id) == {SID, "sess02", "sess03"}
    web, app, db = by_id[SID], by_id["sess02"], by_id["sess03"]
    assert (web.role, web.job_running, web.started, web.result) == (JobRole.SOURCE, True, True, None)
    assert web.last_progress is not None
    assert (db.role, db.job_running, db.result) == (JobRole.SOURCE, False, done)
    assert (app.role, app.job_running, app.created_images) == (JobRole.DESTINATION, True, ["/img/web-a.qcow2"])
    assert app.offer is not None and app.offer.session_id == "sess02" and app.result is None

    only = await jobs.answer(JobsRequest(session_ids=["sess02"]))
    assert [r.session_id for r in only.jobs] == ["sess02"] and only.vms == []

    hv.unavailable = True
    with pytest.raises(FerryError) as down:
        await jobs.answer(JobsRequest())
    assert down.value.code == ErrorCode.UNAVAILABLE and "cannot reach its hypervisor" in down.value.message
    hv.unavailable = False
    hv.end_job("web", moved=True)
    await the_result(published)
    await source.close()
