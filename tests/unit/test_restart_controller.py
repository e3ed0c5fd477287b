"""Restart sessions with in-memory fakes of their ports (coordinator/restarts.py):
one set of records per fence whichever leader plans it, a start that got no
answer is asked again of the same host only, a locked disk is tried nowhere
else, a refusal moves on to another host, a VM reported running is never
started again. The same for real: tests/integration/test_ha_restart_simulated.py
and tests/lab/test_ha_restart.py."""

import asyncio
from dataclasses import dataclass, field

import pytest

from ferry.coordinator.restarts import RestartController
from ferry.proto.api import HostState, HostView
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.ha import DomainCopy, FenceRecord, FenceState, HaPolicy, HaPriority, RestartReply, RestartState
from ferry.proto.host import Capacity, HealthState, VmInfo
from ferry.proto.limits import Limits


class MemoryRecords:
    """TypedBucket's part the controller uses, with its compare-and-set."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[object, int]] = {}
        self._revision = 0

    def _next(self) -> int:
        self._revision += 1
        return self._revision

    async def create(self, key, value) -> int:
        if key in self.held:
            raise FerryError(ErrorCode.CONFLICT, f"restart record {key} exists already")
        self.held[key] = (value, self._next())
        return self.held[key][1]

    async def get(self, key):
        return self.held[key]

    async def put(self, key, value) -> int:
        self.held[key] = (value, self._next())
        return self.held[key][1]

    async def put_if(self, key, value, revision) -> int:
        if self.held[key][1] != revision:
            raise FerryError(ErrorCode.CONFLICT, f"restart record {key} changed")
        return await self.put(key, value)

    async def entries(self):
        return list(self.held.values())

    async def all(self):
        return [v for v, _rev in self.held.values()]


@dataclass
class Fences:
    records: dict[str, FenceRecord] = field(default_factory=dict)

    def record(self, host):
        return self.records.get(host)

    def dead_unplanned(self):
        return [h for h, r in self.records.items() if r.state.dead and not r.restarts_planned]

    async def planned(self, host):
        r = self.records[host]
        self.records[host] = FenceRecord(**{**{f: getattr(r, f) for f in r.__struct_fields__}, "restarts_planned": True})


@dataclass
class Copies:
    held: dict[str, DomainCopy]

    def get(self, vm):
        return self.held.get(vm)


@dataclass
class Agents:
    """Each host's answer to `restart`, in turn: a reply, or a FerryError to raise."""

    answers: dict[str, list] = field(default_factory=dict)
    asked: list[tuple[str, str]] = field(default_factory=list)

    async def restart(self, host, request):
        self.asked.append((host, request.vm))
        answer = (self.answers.get(host) or [None]).pop(0) if self.answers.get(host) else None
        if isinstance(answer, FerryError):
            raise answer
        return RestartReply(vm=request.vm, host=host, running=True, detail=answer or "defined and started here")

    async def retire(self, host, request):
        raise AssertionError("not asked here")


def view(host: str, vms=(), state=HostState.UP) -> HostView:
    return HostView(host=host, state=state, health=HealthState.OK, last_seen_age=0.0,
                    capacity=Capacity(cpus=8, memory_total_mib=8192, memory_free_mib=8192),
                    vms=[VmInfo(name=v, uuid=f"uuid-{v}", vcpus=1, memory_mib=512) for v in vms])


def controller(records, agents, hosts, *, running=None, fences=None, clock=None):
    copies = Copies({vm: DomainCopy(vm=vm, uuid=f"uuid-{vm}", host="hv1", digest="d", xml="<domain/>", vcpus=1,
                                    memory_mib=512) for vm in ("db", "web")})
    policies = {"db": HaPriority.HIGH, "web": HaPriority.LOW}
    events = []

    async def emit(batch):
        events.extend(batch)

    made = RestartController(
        records, copies, fences or Fences({"hv1": FenceRecord(host="hv1", state=FenceState.FENCED, reason="off", at=100.0,
                                                               lost_at=90.0)}),
        type("P", (), {"of": staticmethod(lambda vm: HaPolicy(priority=policies.get(vm, HaPriority.OFF), vm=vm))})(),
        agents.restart, agents.retire, lambda: hosts, running or (lambda vm: []), lambda: Limits(), emit,
        wall=clock or (lambda: 120.0),
    )
    return made, events


HOSTS = [view("hv1", ["db", "web"], HostState.LOST), view("hv2"), view("hv3")]


async def drive(made: RestartController, rounds: int = 5) -> None:
    for _ in range(rounds):
        await made._pass()
        await asyncio.sleep(0)
        for task in list(made._tasks.values()):
            await task


async def test_two_leaders_plan_one_set_of_records_and_the_second_drives_what_the_first_left():
    records, agents = MemoryRecords(), Agents()
    fences = Fences({"hv1": FenceRecord(host="hv1", state=FenceState.FENCED, reason="off", at=100.0)})
    first, _ = controller(records, agents, HOSTS, fences=fences)
    planned = await first.plan("hv1")
    assert [r.vm for r in planned] == ["db", "web"] and len(records.held) == 2
    # The first leader died before it marked the fence planned: the next one plans the same records.
    fences.records["hv1"] = FenceRecord(host="hv1", state=FenceState.FENCED, reason="off", at=100.0)
    second, events = controller(records, agents, HOSTS, fences=fences)
    assert await second.adopt() == 2
    assert len(records.held) == 2
    await drive(second)
    assert {v.vm: v.state for v, _rev in records.held.values()} == {"db": "running", "web": "running"}
    assert sorted(vm for _host, vm in agents.asked) == ["db", "web"]
    assert [type(e).__struct_config__.tag for e in events].count("vm_restarted") == 2


async def test_a_start_without_an_answer_is_asked_again_of_the_same_host_only(monkeypatch):
    monkeypatch.setattr("ferry.coordinator.restarts.RETRY_SECONDS", 0)
    records = MemoryRecords()
    agents = Agents(answers={"hv2": [FerryError(ErrorCode.TIMEOUT, "the agent on hv2 did not answer restart"),
                                     "already running here"],
                             "hv3": [FerryError(ErrorCode.TIMEOUT, "no answer"), "already running here"]})
    made, _events = controller(records, agents, HOSTS)
    await made.plan("hv1")
    await drive(made)
    by_vm: dict[str, list[str]] = {}
    for host, vm in agents.asked:
        by_vm.setdefault(vm, []).append(host)
    assert all(len(set(hosts)) == 1 and len(hosts) == 2 for hosts in by_vm.values()), by_vm
    assert all(v.state == RestartState.RUNNING for v, _rev in records.held.values())


async def test_a_locked_disk_fails_the_restart_and_no_other_host_is_tried():
    records = MemoryRecords()
    locked = FerryError(ErrorCode.DISK_LOCKED, 'hv2 could not start db: Failed to get "write" lock')
    made, events = controller(records, Agents(answers={"hv2": [locked], "hv3": [locked]}), HOSTS)
    await made.plan("hv1")
    await drive(made)
    failed = [e for e in events if type(e).__struct_config__.tag == "vm_restart_failed"]
    assert {e.code for e in failed} == {"disk_locked"}
    for restart, _rev in records.held.values():
        assert restart.state == RestartState.FAILED and len(restart.candidates_tried) == 1


async def test_a_host_that_refuses_is_left_for_the_next():
    records = MemoryRecords()
    refused = FerryError(ErrorCode.START_REFUSED, "hv2 cannot start db: network 'prod' is not active")
    agents = Agents(answers={"hv2": [refused, refused]})
    made, _events = controller(records, agents, [view("hv1", ["db"], HostState.LOST), view("hv2"), view("hv3")])
    await made.plan("hv1")
    await drive(made, rounds=8)
    db = next(r for r, _rev in records.held.values() if r.vm == "db")
    assert db.state == RestartState.RUNNING and db.dest == "hv3" and db.candidates_tried[-1] == "hv3"
    assert [s.state for s in db.history][-3:] == ["queued", "starting", "running"]


async def test_a_vm_reported_running_somewhere_is_not_started_again():
    records, agents = MemoryRecords(), Agents()
    made, events = controller(records, agents, HOSTS, running=lambda vm: ["hv3"] if vm == "db" else [])
    planned = await made.plan("hv1")
    # Planning already leaves it out: it runs.
    assert [r.vm for r in planned] == ["web"]
    assert any(getattr(e, "reason", "") == "it runs on hv3" for e in events)
    await drive(made)
    assert agents.asked == [(agents.asked[0][0], "web")]


async def test_every_restart_ends_by_its_deadline():
    records = MemoryRecords()
    now = [120.0]
    made, events = controller(records, Agents(), [view("hv1", ["db", "web"], HostState.LOST)], clock=lambda: now[0])
    await made.plan("hv1")
    await drive(made, rounds=2)
    assert all(r.state == RestartState.QUEUED and r.waiting.startswith("no host can take") for r, _ in records.held.values())
    now[0] += 601
    await drive(made, rounds=1)
    assert {r.code for r, _rev in records.held.values()} == {"timed_out"}
    assert all("no host can take" in r.reason for r, _rev in records.held.values())


@pytest.fixture(autouse=True)
def _no_real_sleep(monkeypatch):
    monkeypatch.setattr("ferry.coordinator.restarts.RETRY_SECONDS", 0)
