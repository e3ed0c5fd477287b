"""Restart sessions: the HA VMs of a fenced host, started on others (the leader's).

Once a host is fenced (or confirmed dead), `plan` records one restart per HA
VM it last ran (coordinator/restart_plan.py decides which), in KV bucket
ferry_restarts under an id derived from the fence, so a leader that dies
half-way and its successor plan the same records, never a second set. Each
pass then places the queued ones, high priority first, against the room the
hosts report minus what migrations and other restarts hold, at most
`inbound_per_host` starting on one host and `cluster` at once (the migration
limits, counted among restarts). The chosen host's agent defines the VM from
its kept definition and starts it (agent/restarts.py).

Never twice: a VM that any reporting host lists is not started again (its
record ends `running` there); a start refused because a disk is locked ends
`disk_locked` and is not tried elsewhere; a host that did not answer is asked
again (the start is idempotent), and only a host that is lost is given up for
another. Every record reaches `running` or `failed` within its deadline.
"""

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from nats.js import JetStreamContext

from ferry.coordinator.domain_copies import DomainCopies
from ferry.coordinator.fences import Fencer
from ferry.coordinator.ha_policies import HaPolicies
from ferry.coordinator.kv import TypedBucket, open_bucket
from ferry.coordinator.placement import HostFacts
from ferry.coordinator.restart_plan import choose_hosts, new_restart, plan_restarts
from ferry.coordinator.session_rules import FactsCache, host_facts
from ferry.coordinator.sessions.ports import Emit, Hosts, LimitsNow
from ferry.proto.api import HostState, HostView
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.events import (
    CoordinatorEvent,
    VmNotRestarted,
    VmRestarted,
    VmRestartFailed,
    VmRestartQueued,
    VmRestartStarting,
    VmsRetired,
)
from ferry.proto.ha import Restart, RestartReply, RestartRequest, RestartState, RestartStep, RetiredVm, RetireReply, RetireRequest
from ferry.proto.session import Session
from ferry.runtime.wake import woken

R = RestartState
BUCKET = "ferry_restarts"
# A restart not running by then has failed (placement waits, hosts that never answer).
DEADLINE_SECONDS = 600.0
# Hosts a restart is tried on before it fails.
HOSTS_TRIED = 3
PASS_SECONDS = 1.0
RETRY_SECONDS = 2.0

Restarter = Callable[[str, RestartRequest], Awaitable[RestartReply]]


async def open_restart_records(js: JetStreamContext, *, replicas: int = 1) -> TypedBucket[Restart]:
    bucket = await open_bucket(js, BUCKET, "Ferry: restart sessions of HA VMs of dead hosts", replicas=replicas)
    return TypedBucket(bucket, Restart, "restart record")


def _step(restart: Restart, state: RestartState, now: float, **changes) -> Restart:
    reason = changes.get("reason", "")
    step = RestartStep(at=now, state=state, dest=changes.get("dest", restart.dest), reason=reason)
    return msgspec.structs.replace(restart, state=state, updated_at=now, history=[*restart.history, step], **changes)


class RestartController:
    def __init__(
        self,
        records: TypedBucket[Restart],
        copies: DomainCopies,
        fencer: Fencer,
        policies: HaPolicies,
        restart: Restarter,
        retire: Callable[[str, RetireRequest], Awaitable[RetireReply]],
        hosts: Hosts,
        locate: Callable[[str], list[str]],
        limits: LimitsNow,
        emit: Emit,
        *,
        holding: Callable[[], list[Session]] = list,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._records = records
        self._copies = copies
        self._fencer = fencer
        self._policies = policies
        self._restart = restart
        self._retire = retire
        self._hosts = hosts
        self._locate = locate
        self._limits = limits
        self._emit = emit
        self._holding = holding
        self._wall = wall
        self._log = structlog.get_logger().bind(component="restarts")
        # Records not ended, as last written (with their revision).
        self._open: dict[str, tuple[Restart, int]] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._facts = FactsCache()
        self._lock = asyncio.Lock()
        self._on_end: Callable[[Restart], None] | None = None

    def on_end(self, hook: Callable[[Restart], None]) -> None:
        """`hook` for each restart that ends (for /metrics)."""
        self._on_end = hook

    # ----- planning -----

    async def adopt(self) -> int:
        """After a takeover: every open record is taken up, a restart that was starting
        is asked again of the same host, and dead hosts whose restarts were never
        planned are planned now."""
        for restart, revision in await self._records.entries():
            if not restart.state.terminal:
                self._open[restart.id] = (restart, revision)
                if restart.state == R.STARTING:
                    self._spawn(restart)
        for host in self._fencer.dead_unplanned():
            await self.plan(host)
        self._wake.set()
        return len(self._open)

    async def plan(self, host: str) -> list[Restart]:
        """Record the restarts of the fenced `host` (once per fence) and say what is not restarted."""
        async with self._lock:
            fence = self._fencer.record(host)
            if fence is None or not fence.state.dead or fence.restarts_planned:
                return []
            now = self._wall()
            view = next((v for v in self._hosts() if v.host == host), None)
            events: list[CoordinatorEvent] = []
            created: list[Restart] = []
            if view is None:
                events.append(VmNotRestarted(vm="", host=host, reason=f"this coordinator holds no report of {host}: "
                                             "its VMs are not known, nothing is restarted", at=now))
            else:
                planned, skipped = plan_restarts(host, view.vms, self._policies.of, self._copies.get, self._locate)
                for p in planned:
                    restart = new_restart(p, host, fenced_at=fence.at, lost_at=fence.lost_at or fence.at,
                                          fenced_by=fence.by, now=now)
                    restart = _step(restart, R.QUEUED, now)
                    try:
                        revision = await self._records.create(restart.id, restart)
                    except FerryError as exc:
                        if exc.code != ErrorCode.CONFLICT:
                            raise
                        restart, revision = await self._records.get(restart.id)  # planned by an earlier leader
                    if not restart.state.terminal:
                        self._open[restart.id] = (restart, revision)
                    created.append(restart)
                    events.append(VmRestartQueued(restart_id=restart.id, vm=p.vm, host=host, priority=p.priority, at=now))
                events += [VmNotRestarted(vm=s.vm, host=host, reason=s.reason, at=now) for s in skipped]
            await self._fencer.planned(host)
        for event in events:
            log = self._log.error if isinstance(event, VmNotRestarted) else self._log.warning
            log(event.__struct_config__.tag, **msgspec.structs.asdict(event))
        await self._emit(events)
        self._wake.set()
        return created

    # ----- placing -----

    async def run(self) -> None:
        while True:
            await woken(self._wake, PASS_SECONDS)
            try:
                await self._pass()
            except Exception:
                self._log.exception("restart_pass_failed")

    async def _pass(self) -> None:
        now = self._wall()
        queued = []
        for restart, _rev in list(self._open.values()):
            if now - restart.created_at > DEADLINE_SECONDS and not self._starting_now(restart.id):
                await self._fail(restart, "timed_out", f"not running {DEADLINE_SECONDS:.0f} s after it was planned"
                                 + (f": {restart.waiting}" if restart.waiting else ""))
            elif restart.state == R.QUEUED:
                runs_on = self._locate(restart.vm)
                if runs_on:
                    await self._finish(restart, runs_on[0], f"{restart.vm} is reported running on {runs_on[0]}")
                    continue
                copy = self._copies.get(restart.vm)
                if copy is None:
                    await self._fail(restart, "no_definition", "the kept copy of its definition is gone")
                    continue
                queued.append((restart, copy))
        if not queued:
            return
        views = self._hosts()
        facts = self._with_starting(host_facts(views, self._holding(), self._facts))
        starting = Counter(r.dest for r, _rev in self._open.values() if r.state == R.STARTING)
        limits = self._limits()
        for choice in choose_hosts(queued, facts, starting, limits.inbound_per_host, limits.cluster):
            restart = self._open[choice.restart_id][0]
            if choice.dests:
                await self._begin(restart, choice.dests[0])
            elif restart.waiting != choice.reason:
                await self._write(msgspec.structs.replace(restart, waiting=choice.reason, updated_at=now))
                self._log.info("restart_waiting", restart_id=restart.id, vm=restart.vm, reason=choice.reason)

    def _with_starting(self, facts: list[HostFacts]) -> list[HostFacts]:
        """Room held by restarts whose VM its new host does not list yet."""
        held: dict[str, tuple[int, int]] = {}
        for r, _rev in self._open.values():
            if r.state == R.STARTING and r.dest not in self._locate(r.vm):
                vcpus, memory = held.get(r.dest, (0, 0))
                held[r.dest] = (vcpus + r.vcpus, memory + r.memory_mib)
        return [f.holding(*held[f.name]) if f.name in held else f for f in facts]

    def _starting_now(self, restart_id: str) -> bool:
        task = self._tasks.get(restart_id)
        return task is not None and not task.done()

    async def _begin(self, restart: Restart, dest: str) -> None:
        restart = await self._write(_step(restart, R.STARTING, self._wall(), dest=dest, waiting="",
                                          candidates_tried=[*restart.candidates_tried, dest]))
        await self._emit([VmRestartStarting(restart_id=restart.id, vm=restart.vm, dest=dest, at=self._wall())])
        self._spawn(restart)

    # ----- starting -----

    def _spawn(self, restart: Restart) -> None:
        # A task that just ended (a refusal that put the restart back in the queue) may
        # not have been forgotten yet when the next pass starts the restart again.
        running = self._tasks.get(restart.id)
        if running is None or running.done():
            task = asyncio.create_task(self._start(restart.id), name=f"restart-{restart.id}")
            self._tasks[restart.id] = task
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        rid = task.get_name().removeprefix("restart-")
        if self._tasks.get(rid) is task:
            del self._tasks[rid]

    async def _start(self, restart_id: str) -> None:
        log = self._log.bind(restart_id=restart_id)
        try:
            await self._starting(restart_id, log)
        except Exception:
            # The record stays `starting`: the next leader (or the deadline) takes it from there.
            log.exception("restart_not_driven")

    async def _starting(self, restart_id: str, log) -> None:
        while restart_id in self._open:
            restart = self._open[restart_id][0]
            if restart.state != R.STARTING:
                return
            copy = self._copies.get(restart.vm)
            if copy is None:
                await self._fail(restart, "no_definition", "the kept copy of its definition is gone")
                return
            elsewhere = [h for h in self._locate(restart.vm) if h != restart.dest]
            if elsewhere:
                await self._finish(restart, elsewhere[0], f"{restart.vm} is reported running on {elsewhere[0]}")
                return
            request = RestartRequest(restart_id=restart.id, vm=restart.vm, uuid=copy.uuid, xml=copy.xml)
            try:
                reply = await self._restart(restart.dest, request)
            except FerryError as exc:
                if await self._refused(restart, exc, log):
                    return
                await asyncio.sleep(RETRY_SECONDS)
                continue
            except Exception:
                log.exception("restart_request_failed")
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if reply.running:
                await self._finish(restart, restart.dest, reply.detail)
                return

    async def _refused(self, restart: Restart, exc: FerryError, log) -> bool:
        """Whether the refusal ended this attempt (True), or the same host is asked again."""
        log.warning("restart_not_started", vm=restart.vm, dest=restart.dest, code=exc.code, reason=exc.message)
        if exc.code == ErrorCode.DISK_LOCKED:
            # A copy runs somewhere and holds the disk: no other host will do better.
            await self._fail(restart, ErrorCode.DISK_LOCKED, exc.message)
            return True
        if exc.code in (ErrorCode.TIMEOUT, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL):
            dest = next((v for v in self._hosts() if v.host == restart.dest), None)
            if dest is not None and dest.state != HostState.LOST and self._wall() - restart.created_at < DEADLINE_SECONDS:
                return False  # it may have started it: only the same host is asked again
        if len(restart.candidates_tried) >= HOSTS_TRIED or self._wall() - restart.created_at >= DEADLINE_SECONDS:
            await self._fail(restart, exc.code, exc.message)
        else:
            await self._write(_step(restart, R.QUEUED, self._wall(), dest="", reason=f"{restart.dest}: {exc.message}"))
            self._wake.set()
        return True

    async def _finish(self, restart: Restart, dest: str, detail: str) -> None:
        now = self._wall()
        seconds = round(now - restart.lost_at, 3) if restart.lost_at else 0.0
        restart = await self._write(_step(restart, R.RUNNING, now, dest=dest, reason=detail, seconds=seconds, waiting=""))
        self._log.warning("vm_restarted", restart_id=restart.id, vm=restart.vm, dest=dest, seconds=seconds, detail=detail)
        await self._emit([VmRestarted(restart_id=restart.id, vm=restart.vm, host=restart.host, dest=dest, seconds=seconds,
                                      at=now)])

    async def _fail(self, restart: Restart, code: str, reason: str) -> None:
        now = self._wall()
        restart = await self._write(_step(restart, R.FAILED, now, code=str(code), reason=reason))
        self._log.error("vm_restart_failed", restart_id=restart.id, vm=restart.vm, code=str(code), reason=reason)
        await self._emit([VmRestartFailed(restart_id=restart.id, vm=restart.vm, host=restart.host, code=str(code),
                                          reason=reason, at=now)])

    async def _write(self, restart: Restart) -> Restart:
        held = self._open.get(restart.id)
        revision = await (self._records.put_if(restart.id, restart, held[1]) if held else self._records.put(restart.id, restart))
        if restart.state.terminal:
            self._open.pop(restart.id, None)
            if self._on_end is not None:
                self._on_end(restart)
        else:
            self._open[restart.id] = (restart, revision)
        return restart

    # ----- a fenced host that returns -----

    async def retire_returned(self, view: HostView) -> VmsRetired | None:
        """A fenced host reports again: the definitions it holds of VMs that were
        restarted elsewhere are removed there (agent verb `retire`), so neither an
        operator nor an autostart runs them a second time."""
        moved = {r.vm for r in await self._records.all()
                 if r.host == view.host and r.state == R.RUNNING and r.dest != view.host}
        todo = [RetiredVm(vm=vm.name, uuid=vm.uuid) for vm in view.vms if vm.name in moved and vm.uuid]
        if not todo:
            return None
        reply = await self._retire(view.host, RetireRequest(vms=todo))
        event = VmsRetired(
            host=view.host, vms=reply.retired, running=reply.running, at=self._wall(),
            reason=f"{view.host} was fenced; these VMs run on other hosts since",
        )
        if reply.running:
            self._log.critical("vm_runs_twice", host=view.host, vms=reply.running)
        self._log.warning("vms_retired", host=view.host, vms=reply.retired, running=reply.running)
        await self._emit([event])
        return event

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()


async def read_restarts(records: TypedBucket[Restart], host: str | None, limit: int) -> list[Restart]:
    """Newest first (for `ferry ha restarts`, on any coordinator)."""
    found = [r for r in await records.all() if host is None or r.host == host]
    return sorted(found, key=lambda r: (-r.created_at, r.vm))[:limit]
