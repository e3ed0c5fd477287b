"""Drains: mark a host, plan its VMs' destinations, start and follow their sessions.

The drain record in KV is the host's draining mark and the per-VM report. A
loop steps every running drain (coordinator/drain_plan.py decides; this module
acts): it starts sessions under the admission limits, retries a VM elsewhere
after a failure, gives up after `max_attempts`, and finishes the drain when
every VM is moved or given up. The host stays marked until `ferry undrain`.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from nats.js import JetStreamContext

from ferry.coordinator import drain_plan
from ferry.coordinator.config import DrainSettings
from ferry.coordinator.kv import TypedBucket, WatchedBucket, open_bucket
from ferry.coordinator.session_rules import check_policy, host_facts, reported_demand
from ferry.coordinator.session_store import VmBusy
from ferry.coordinator.sessions import SessionManager
from ferry.proto.api import HostState, HostView, MigrateRequest
from ferry.proto.drain import Drain, DrainItem, DrainReply, DrainRequest, DrainState
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.events import CoordinatorEvent, DrainStarted, HostUndrained, VmPlaced
from ferry.proto.host import VmState
from ferry.proto.session import MigrateOptions, SessionOrigin, SessionState
from ferry.runtime.wake import woken

BUCKET = "ferry_drains"
STEP_SECONDS = 1.0


async def open_drain_records(js: JetStreamContext, *, replicas: int = 1) -> WatchedBucket[Drain]:
    """The drain records, followed by a KV watch (every coordinator holds one: the
    marks it shows are KV's, not its own)."""
    bucket = await open_bucket(js, BUCKET, "Ferry: drained hosts and their drains", replicas=replicas)
    return WatchedBucket(TypedBucket(bucket, Drain, "drain"))


def draining_marks(records: WatchedBucket[Drain]) -> dict[str, str]:
    """Draining hosts and why."""
    return {host: d.reason for host, d in records.values().items()}


def find_drain(records: WatchedBucket[Drain], host: str) -> Drain:
    held = records.get(host)
    if held is None:
        raise FerryError(ErrorCode.NOT_FOUND, f"{host} is not draining")
    return held[0]


# Dirty-rate measurements a drain's dry run asks of a host at once.
PREDICTIONS_AT_ONCE = 8


class DrainController:
    """The leader's side of drains: it alone writes drain records, each write a
    compare-and-set on the revision the watched records hold."""

    def __init__(
        self,
        records: WatchedBucket[Drain],
        sessions: SessionManager,
        hosts: Callable[[], list[HostView]],
        emit: Callable[[list[CoordinatorEvent]], Awaitable[None]],
        settings: DrainSettings = DrainSettings(),
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._records = records
        self._store = records.store
        self._sessions = sessions
        self._hosts = hosts
        self._emit = emit
        self._settings = settings
        self._wall = wall
        self._log = structlog.get_logger().bind(component="drains")
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def marks(self) -> dict[str, str]:
        return draining_marks(self._records)

    def get(self, host: str) -> Drain:
        return find_drain(self._records, host)

    def all(self) -> list[Drain]:
        return list(self._records.values().values())

    def wake(self) -> None:
        self._wake.set()

    async def _write(self, drain: Drain, revision: int | None) -> None:
        """Create the record (`revision` None) or replace the one at `revision`."""
        if revision is None:
            written = await self._store.create(drain.host, drain)
        else:
            written = await self._store.put_if(drain.host, drain, revision)
        self._records.saw(drain.host, drain, written)

    # ----- operator and evacuation requests -----

    async def drain(self, request: DrainRequest, *, automatic: bool = False, requested_by: str = "") -> DrainReply:
        views = {h.host: h for h in self._hosts()}
        view = views.get(request.host)
        if view is None:
            raise FerryError(ErrorCode.UNKNOWN_HOST, f"no host named {request.host} has reported to the coordinator")
        if view.state == HostState.LOST:
            raise FerryError(
                ErrorCode.HOST_LOST,
                f"{request.host} is lost (no heartbeat for {view.last_seen_age:.0f} s): its VMs cannot be live-migrated",
            )
        async with self._lock:
            held = self._records.get(request.host)
            existing, revision = held if held is not None else (None, None)
            if existing is not None and existing.state == DrainState.RUNNING and not request.dry_run:
                # Draining twice has the effect of draining once; a failing host's
                # evacuation turns an operator's drain into an evacuation.
                if automatic and not existing.automatic:
                    existing = msgspec.structs.replace(
                        existing, automatic=True, reason=f"{existing.reason}; then {request.reason}"
                    )
                    await self._write(existing, revision)
                return DrainReply(drain=existing)
            check_policy(MigrateOptions(policy=request.policy))
            drain = msgspec.structs.replace(self._plan(request, view, views, automatic), requested_by=requested_by)
            if request.dry_run:
                return DrainReply(drain=await self._predicted(drain), dry_run=True)
            await self._write(drain, revision)
        unplaced = sum(1 for i in drain.items if i.dest is None)
        self._log.info(
            "drain_planned", host=drain.host, reason=drain.reason, automatic=automatic, by=requested_by,
            vms=len(drain.items), unplaced=unplaced,
            plan={i.vm: i.dest or f"unplaced: {i.reason}" for i in drain.items},
        )
        await self._emit(
            [DrainStarted(
                host=drain.host, reason=drain.reason, automatic=automatic, vms=len(drain.items), unplaced=unplaced,
                requested_by=requested_by,
            )]
        )
        self.wake()
        return DrainReply(drain=drain)

    def _plan(self, request: DrainRequest, view: HostView, views: dict[str, HostView], automatic: bool) -> Drain:
        running = [vm for vm in view.vms if vm.state in (VmState.RUNNING, VmState.PAUSED)]
        # The host being drained takes nothing, whatever its mark says right now.
        marked = [
            msgspec.structs.replace(v, draining=True) if v.host == request.host else v for v in views.values()
        ]
        moves = drain_plan.plan(
            [reported_demand(vm.name, view) for vm in running],
            host_facts(marked, self._sessions.holding()),
        )
        return drain_plan.new_drain(
            request.host,
            moves,
            {vm.name: (vm.vcpus, vm.memory_mib) for vm in running},
            self._wall(),
            reason=request.reason or ("health" if automatic else "operator"),
            automatic=automatic,
            priority=request.priority,
            max_attempts=self._settings.max_attempts,
            policy=request.policy,
        )

    async def _predicted(self, drain: Drain) -> Drain:
        """Each planned VM with a prediction from its dirty rate measured now (in parallel)."""

        # Fewer at once than an agent's measure limit: a big host's dry run is not refused `unavailable`.
        slots = asyncio.Semaphore(PREDICTIONS_AT_ONCE)

        async def one(item: DrainItem) -> DrainItem:
            if item.dest is None:
                return item
            async with slots:
                return await predicted(item)

        async def predicted(item: DrainItem) -> DrainItem:
            request = MigrateRequest(
                vm=item.vm, source=drain.host, dest=item.dest, options=MigrateOptions(policy=drain.policy)
            )
            try:
                plan = await self._sessions.plan(request)
            except FerryError as exc:
                return msgspec.structs.replace(item, reason=f"no prediction: {exc.message}")
            return msgspec.structs.replace(item, prediction=plan.prediction, reason=plan.note or item.reason)

        items = await asyncio.gather(*(one(item) for item in drain.items))
        return msgspec.structs.replace(drain, items=list(items))

    async def undrain(self, host: str, *, by: str = "") -> Drain:
        async with self._lock:
            held = self._records.get(host)
            if held is None:
                raise FerryError(ErrorCode.NOT_FOUND, f"{host} is not draining")
            drain = held[0]
            await self._records.remove(host)
        cancelled = 0
        for item in drain.items:
            session = self._sessions.known(item.session_id) if item.session_id else None
            if session is not None and session.state == SessionState.QUEUED:
                try:
                    await self._sessions.cancel(session.id, by=by)
                    cancelled += 1
                except FerryError:
                    pass  # it started meanwhile: it finishes on its own
        self._log.info("host_undrained", host=host, by=by, cancelled=cancelled)
        await self._emit([HostUndrained(host=host, cancelled=cancelled, by=by)])
        self._sessions.wake()
        return drain

    # ----- the loop -----

    async def run(self) -> None:
        while True:
            await woken(self._wake, STEP_SECONDS)
            for host in [h for h, d in self._records.values().items() if d.state == DrainState.RUNNING]:
                try:
                    async with self._lock:
                        await self._step(host)
                except Exception:
                    self._log.exception("drain_step_failed", host=host)

    async def _step(self, host: str) -> None:
        held = self._records.get(host)
        if held is None or held[0].state != DrainState.RUNNING:
            return
        drain, revision = held
        view = next((h for h in self._hosts() if h.host == host), None)
        vms_on_host = None
        if view is not None and view.state == HostState.UP:
            vms_on_host = {
                vm.name: (vm.vcpus, vm.memory_mib) for vm in view.vms if vm.state in (VmState.RUNNING, VmState.PAUSED)
            }
        sessions = {}
        for item in drain.items:
            if item.session_id:
                session = self._sessions.known(item.session_id)
                if session is None:
                    try:
                        session = await self._sessions.get(item.session_id)
                    except FerryError:
                        continue
                sessions[item.session_id] = session
        now = self._wall()
        # VMs on their way here (admitted before the mark), not yet reported by the host.
        known = {item.vm for item in drain.items} | set(vms_on_host or ())
        incoming = [s.vm for s in self._sessions.arriving(host) if s.vm not in known]
        step = drain_plan.step(
            drain, sessions, vms_on_host, now, retry_delay=self._settings.retry_delay, incoming=incoming
        )
        items = {item.vm: item for item in step.drain.items}
        events: list[CoordinatorEvent] = list(step.events)
        for start in step.start:
            items[start.vm], event = await self._start(step.drain, items[start.vm], start, now)
            if event is not None:
                events.append(event)
        updated = msgspec.structs.replace(step.drain, items=[items[i.vm] for i in step.drain.items])
        if updated != drain:
            try:
                await self._write(updated, revision)
            except FerryError as exc:
                # Written by someone else meanwhile (an undrain, a leader before
                # us): the next step starts from what KV holds now.
                self._log.warning("drain_step_superseded", host=host, reason=exc.message)
                return
        await self._emit(events)

    async def _start(
        self, drain: Drain, item: DrainItem, start: drain_plan.StartSession, now: float
    ) -> tuple[DrainItem, CoordinatorEvent | None]:
        origin = SessionOrigin.EVACUATION if drain.automatic else SessionOrigin.DRAIN
        try:
            session = await self._sessions.start(
                MigrateRequest(
                    vm=item.vm, source=drain.host, options=MigrateOptions(priority=drain.priority, policy=drain.policy)
                ),
                origin=origin,
                drain_host=drain.host,
                requested_by=drain.requested_by,
                hint=start.hint,
                avoid=start.avoid,
            )
        except FerryError as exc:
            self._log.info("drain_session_not_started", host=drain.host, vm=item.vm, reason=exc.message)
            # Another session moving the VM is no failure of this drain's: wait for it.
            counts = not isinstance(exc, VmBusy)
            return drain_plan.not_started(item, exc.message, now, self._settings.retry_delay, counts=counts), None
        placed = VmPlaced(
            host=drain.host, vm=item.vm, session_id=session.id, dest=start.hint, attempt=start.attempt
        )
        return drain_plan.started(item, session), placed

