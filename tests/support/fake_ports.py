"""In-memory fakes of the session shell's ports (coordinator/sessions/ports.py):
a small world of hosts whose agents answer like real ones (journaled jobs,
reservations, where each VM runs), a record store with compare-and-set, VM
claims, and a clock whose sleeps advance virtual time at once.

Faults are switches: a host that does not answer, a store that fails its next
writes, a destination whose commit answers late.
"""

import asyncio
from dataclasses import dataclass, field

import msgspec

from ferry.proto.agent import (
    AbortReply,
    BandwidthRequest,
    CommitReply,
    DirtyRate,
    JobReport,
    JobRole,
    JobsReply,
    JobsRequest,
    MeasureRequest,
    MigrateRequest,
    MigrationState,
    Offer,
    PrepareReply,
    PrepareRequest,
    RollbackReply,
    SessionRef,
    SessionResult,
    VmDescription,
    VmPlace,
)
from ferry.proto.api import HostState, HostView
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import Capacity, HealthState, Versions, VmInfo, VmState
from ferry.proto.session import Outcome, Session


class FakeClock:
    """Virtual time: `sleep` moves it forward and yields once."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


@dataclass
class FakeHost:
    name: str
    vms: dict[str, VmState] = field(default_factory=dict)
    answering: bool = True
    offers: dict[str, Offer] = field(default_factory=dict)
    jobs: dict[str, JobReport] = field(default_factory=dict)
    # Commit requests that go unanswered before one is answered.
    commit_silences: int = 0
    migrate_requests: list[MigrateRequest] = field(default_factory=list)
    rollbacks: list[str] = field(default_factory=list)
    # The peer URI its heartbeat announces (None: the one its offers name).
    announced: str | None = None
    # What its source refuses migrate requests with (as an agent's config would).
    refuses_migrate: FerryError | None = None


class FakeAgents:
    """The agents of a few hosts. A migration runs until `job_turns` jobs
    requests have seen it running (or the test ends it with `finish`)."""

    def __init__(self, clock: FakeClock, *hosts: FakeHost, job_turns: int = 2) -> None:
        self.clock = clock
        self.hosts = {h.name: h for h in hosts}
        self.job_turns = job_turns
        self._turns: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []

    def _host(self, host: str, verb: str) -> FakeHost:
        self.calls.append((host, verb))
        fake = self.hosts[host]
        if not fake.answering:
            raise FerryError(ErrorCode.TIMEOUT, f"the agent on {host} did not answer {verb} within 10 s")
        return fake

    async def describe(self, host: str, vm: str) -> VmDescription:
        fake = self._host(host, "describe")
        if vm not in fake.vms:
            raise FerryError(ErrorCode.UNKNOWN_VM, f"{host} has no VM named {vm}")
        return VmDescription(name=vm, uuid=f"u-{vm}", vcpus=1, memory_mib=256, running=fake.vms[vm] == VmState.RUNNING)

    async def measure(self, host: str, request: MeasureRequest) -> DirtyRate:
        self._host(host, "measure")
        return DirtyRate(vm=request.vm, host=host, bps=1 << 20, seconds=1.0, at=self.clock.now)

    async def prepare(self, host: str, request: PrepareRequest) -> PrepareReply:
        fake = self._host(host, "prepare")
        offer = fake.offers.setdefault(request.session_id, Offer(session_id=request.session_id, host=host, peer_uri=peer_uri(host)))
        return offer

    async def migrate(self, host: str, request: MigrateRequest) -> MigrationState:
        fake = self._host(host, "migrate")
        job = fake.jobs.get(request.session_id)
        if job is None and fake.refuses_migrate is not None:
            raise fake.refuses_migrate
        if job is None:
            fake.migrate_requests.append(request)
            job = JobReport(session_id=request.session_id, vm=request.vm, role=JobRole.SOURCE, job_running=True, started=True)
            fake.jobs[request.session_id] = job
            self.hosts[request.dest].vms[request.vm] = VmState.PAUSED  # the incoming domain
        return MigrationState(session_id=request.session_id, running=job.job_running, result=job.result)

    def finish(self, session_id: str, source: str, dest: str, *, ok: bool) -> None:
        """The migration job ends (the guest moves, or stays)."""
        job = self.hosts[source].jobs[session_id]
        request = next((r for r in self.hosts[source].migrate_requests if r.session_id == session_id), None)
        result = SessionResult(
            session_id=session_id, vm=job.vm, host=source, at=self.clock.now, ok=ok,
            code="" if ok else "migration_failed", reason="" if ok else "the network failed",
            outcome=Outcome(total_time_ms=1000) if ok else None,
            # As a source reports what it asked libvirt for ("" for a job it never started here).
            encryption=("tls" if request.options.tls else "none") if request is not None else "",
        )
        self.hosts[source].jobs[session_id] = msgspec.structs.replace(job, job_running=False, result=result)
        if ok:
            self.hosts[source].vms.pop(job.vm, None)
            self.hosts[dest].vms[job.vm] = VmState.RUNNING
        else:
            self.hosts[dest].vms.pop(job.vm, None)

    async def abort(self, host: str, ref: SessionRef) -> AbortReply:
        self._host(host, "abort")
        return AbortReply(session_id=ref.session_id, aborted=ref.session_id in self.hosts[host].jobs)

    async def bandwidth(self, host: str, request: BandwidthRequest) -> MigrationState:
        self._host(host, "bandwidth")
        return MigrationState(session_id=request.session_id, running=True, bandwidth_mib=request.bandwidth_mib)

    async def commit(self, host: str, ref: SessionRef) -> CommitReply:
        fake = self._host(host, "commit")
        if fake.commit_silences:
            fake.commit_silences -= 1
            raise FerryError(ErrorCode.TIMEOUT, f"the agent on {host} did not answer commit within 10 s")
        running = fake.vms.get(ref.vm) == VmState.RUNNING
        if running:
            fake.offers.pop(ref.session_id, None)
        return CommitReply(session_id=ref.session_id, host=host, vm_running=running, outcome=Outcome(downtime_ms=20) if running else None)

    async def rollback(self, host: str, ref: SessionRef) -> RollbackReply:
        fake = self._host(host, "rollback")
        fake.rollbacks.append(ref.session_id)
        fake.offers.pop(ref.session_id, None)
        if fake.vms.get(ref.vm) == VmState.PAUSED:
            del fake.vms[ref.vm]
        return RollbackReply(session_id=ref.session_id, host=host)

    async def jobs(self, host: str, request: JobsRequest) -> JobsReply:
        fake = self._host(host, "jobs")
        reports = []
        for sid in request.session_ids:
            job = fake.jobs.get(sid)
            if job is not None and job.job_running:
                turns = self._turns[sid] = self._turns.get(sid, 0) + 1
                if turns >= self.job_turns:
                    dest = next(h for h in self.hosts.values() if h.vms.get(job.vm) == VmState.PAUSED)
                    self.finish(sid, host, dest.name, ok=True)
                    job = fake.jobs[sid]
            if job is not None:
                reports.append(job)
            elif sid in fake.offers:
                incoming = fake.vms.get(_vm_of(request)) == VmState.PAUSED
                reports.append(
                    JobReport(session_id=sid, vm=_vm_of(request), role=JobRole.DESTINATION, offer=fake.offers[sid], job_running=incoming)
                )
        return JobsReply(host=host, jobs=reports, vms=[VmPlace(vm=v, state=fake.vms.get(v)) for v in request.vms])

    def views(self) -> list[HostView]:
        return [
            HostView(
                host=h.name, state=HostState.UP, health=HealthState.OK, last_seen_age=0.5,
                capacity=Capacity(cpus=8, memory_total_mib=16384, memory_free_mib=12000),
                vms=[VmInfo(name=vm, uuid=f"u-{vm}", vcpus=1, memory_mib=256, state=state) for vm, state in h.vms.items()],
                versions=Versions(libvirt="9.0.0", qemu="7.2.0", agent="0.2.0"), arch="x86_64",
                peer_uri=h.announced if h.announced is not None else peer_uri(h.name),
            )
            for h in self.hosts.values()
        ]


def peer_uri(host: str) -> str:
    """The peer URI a fake host announces and offers."""
    return f"qemu+tls://{host}/system"


def _vm_of(request: JobsRequest) -> str:
    return request.vms[0] if request.vms else ""


class MemoryStore:
    """Session records with revisions; `change` is a compare-and-set. `fail_writes`
    makes the next writes fail as a NATS outage would."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[Session, int]] = {}
        self.fail_writes = 0

    def _fault(self) -> None:
        if self.fail_writes:
            self.fail_writes -= 1
            raise ConnectionError("nats: connection closed")

    async def create(self, session: Session) -> int:
        self._fault()
        if session.id in self.records:
            raise FerryError(ErrorCode.CONFLICT, f"session {session.id} exists already")
        self.records[session.id] = (session, 1)
        return 1

    async def get(self, session_id: str) -> tuple[Session, int]:
        if session_id not in self.records:
            raise FerryError(ErrorCode.NOT_FOUND, f"there is no session {session_id}")
        return self.records[session_id]

    async def change(self, session_id: str, change) -> Session:
        self._fault()
        current, revision = await self.get(session_id)
        changed = change(current)
        self.records[session_id] = (changed, revision + 1)
        return changed

    async def all(self) -> list[Session]:
        return sorted((s for s, _ in self.records.values()), key=lambda s: s.created_at)

    def put(self, session: Session) -> None:
        self.records[session.id] = (session, 1)

    def __getitem__(self, session_id: str) -> Session:
        return self.records[session_id][0]


class MemoryClaims:
    def __init__(self) -> None:
        self.holders: dict[str, str] = {}
        # Releases that fail (as a KV write does while NATS elects a stream leader).
        self.failing_releases = 0

    async def claim(self, vm: str, session_id: str) -> None:
        holder = self.holders.get(vm)
        if holder not in (None, session_id):
            raise FerryError(ErrorCode.CONFLICT, f"{vm} is already being moved by session {holder}")
        self.holders[vm] = session_id

    async def release(self, vm: str, session_id: str) -> None:
        if self.failing_releases:
            self.failing_releases -= 1
            raise TimeoutError("nats: timeout")
        if self.holders.get(vm) == session_id:
            del self.holders[vm]

    async def holding_sessions(self) -> set[str]:
        return set(self.holders.values())
