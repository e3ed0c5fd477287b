"""The coordinator daemon: keeps the registry from heartbeats, runs admission,
drains and health-triggered evacuation, and answers the API."""

import asyncio
import time
from collections.abc import Callable

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.micro import add_service

from ferry.coordinator.agents import AgentClient
from ferry.coordinator.config import CoordinatorConfig
from ferry.coordinator.drains import DrainController
from ferry.coordinator.health_watch import HealthWatch, Verdict
from ferry.coordinator.limits_keeper import LimitsKeeper
from ferry.coordinator.registry import Registry
from ferry.coordinator.session_store import SessionStore, VmClaims
from ferry.coordinator.sessions import SessionManager
from ferry.coordinator.sessions.ports import Clock
from ferry.proto import subjects
from ferry.proto.api import (
    BandwidthChange,
    CancelRequest,
    HostsReply,
    HostsRequest,
    HostState,
    HostView,
    MigrateRequest,
    PlanReply,
    SessionReply,
    SessionRequest,
    SessionsReply,
    SessionsRequest,
)
from ferry.proto.codec import Decoder, encode
from ferry.proto.drain import (
    Drain,
    DrainReply,
    DrainRequest,
    DrainsReply,
    DrainsRequest,
    UndrainRequest,
)
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.events import (
    CoordinatorEvent,
    DrainGaveUp,
    EvacuationPending,
    HostLost,
    PlacementsStopped,
)
from ferry.proto.host import StatusDecoder
from ferry.proto.limits import LimitsReply, LimitsRequest
from ferry.runtime.connection import connect, disconnect
from ferry.runtime.service import endpoint
from ferry.runtime.version import VERSION

SWEEP_SECONDS = 0.25
# Before adopting sessions: one heartbeat round, at least this long, plus a margin.
MIN_WARM_UP_SECONDS = 1.0
WARM_UP_MARGIN_SECONDS = 0.5


class Coordinator:
    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._monotonic = monotonic
        self._wall = wall
        self._log = structlog.get_logger().bind(component="coordinator")
        self._registry = Registry(
            timeout_factor=config.heartbeat_timeout_factor,
            timeout=config.heartbeat_timeout or None,
        )
        self._status_decoder = StatusDecoder()
        self._health = HealthWatch(config.evacuation.debounce_seconds, enabled=config.evacuation.enabled)
        self._nc: Client | None = None
        self._sessions: SessionManager | None = None
        self._drains: DrainController | None = None
        self._limits: LimitsKeeper | None = None

    async def run(self, stop: asyncio.Event) -> None:
        nc = self._nc = await connect(
            self._config.nats, name="ferry-coordinator", log=self._log, on_reconnected=self._on_reconnected
        )
        try:
            js = nc.jetstream()
            store = await SessionStore.open(js)
            limits = self._limits = await LimitsKeeper.open(js, self._config.limits)
            sessions = self._sessions = SessionManager(
                store,
                await VmClaims.open(js, store),
                AgentClient(nc, timeout=self._config.agent_timeout),
                self._views,
                self._emit,
                limits.current,
                clock=Clock(wall=self._wall, monotonic=self._monotonic),
            )
            drains = self._drains = await DrainController.open(
                js, sessions, self._views, self._emit, self._config.drain, wall=self._wall
            )
            await nc.subscribe(subjects.ALL_HOST_STATUS, cb=self._on_status)
            await nc.subscribe(subjects.ALL_HOST_SESSIONS, cb=self._on_session_update)
            service = await add_service(
                nc,
                name="ferry-coordinator",
                version=VERSION,
                description="Ferry coordinator: hosts, placement, migration sessions",
            )
            async with service:
                api = service.add_group(name=f"{subjects.PREFIX}.api")
                for verb, request_type, handler in (
                    ("hosts", HostsRequest, self._handle_hosts),
                    ("migrate", MigrateRequest, self._handle_migrate),
                    ("plan", MigrateRequest, self._handle_plan),
                    ("sessions", SessionsRequest, self._handle_sessions),
                    ("session", SessionRequest, self._handle_session),
                    ("cancel", CancelRequest, self._handle_cancel),
                    ("bandwidth", BandwidthChange, self._handle_bandwidth),
                    ("limits", LimitsRequest, self._handle_limits),
                    ("drain", DrainRequest, self._handle_drain),
                    ("undrain", UndrainRequest, self._handle_undrain),
                    ("drains", DrainsRequest, self._handle_drains),
                ):
                    await api.add_endpoint(
                        name=verb,
                        handler=endpoint(Decoder(request_type, f"{verb} request"), handler, log=self._log, verb=verb),
                    )
                self._log.info("coordinator_started", version=VERSION, limits=msgspec.structs.asdict(limits.current()))
                loops = [asyncio.create_task(self._sweep_loop(), name="sweep")]
                # Nothing is adopted, admitted or drained before every host had
                # its chance to report: a session must not fail `source_unreachable`
                # because the coordinator has not heard its source yet.
                warm_for = await self._warm_up(stop)
                adopted = await sessions.adopt()
                self._log.info("sessions_adopted", adopted=adopted, warm_up_seconds=round(warm_for, 2))
                loops += [
                    asyncio.create_task(sessions.run(), name="sessions"),
                    asyncio.create_task(drains.run(), name="drains"),
                ]
                await stop.wait()
                for task in loops:
                    task.cancel()
                await sessions.close()
        finally:
            await disconnect(nc)
            self._log.info("coordinator_stopped")

    async def _warm_up(self, stop: asyncio.Event) -> float:
        """Listen to heartbeats for one full round: the longest interval a host
        announced (about 2 s by default) plus a margin, never past `warm_up_max`."""
        started = self._monotonic()
        while not stop.is_set():
            elapsed = self._monotonic() - started
            round_seconds = max(self._registry.longest_interval(), MIN_WARM_UP_SECONDS) + WARM_UP_MARGIN_SECONDS
            if elapsed >= min(round_seconds, self._config.warm_up_max):
                return elapsed
            await asyncio.sleep(0.1)
        return self._monotonic() - started

    async def _on_status(self, msg: Msg) -> None:
        try:
            status, rejected = self._status_decoder.decode(msg.data)
        except FerryError as exc:
            self._log.warning("bad_heartbeat", subject=msg.subject, reason=exc.message)
            if msg.reply:
                await msg.respond(encode(exc.to_reply()))
            return
        if not subjects.speaks_for(msg.subject, status.host):
            # An agent may only speak for its own host (permissions pin its subjects).
            self._log.warning("heartbeat_host_mismatch", subject=msg.subject, host=status.host)
            return
        previous = self._registry.get(status.host)
        if rejected and (previous is None or previous.rejected_vms != rejected):
            # Once per change, not once per heartbeat: the host stays, these VMs are left out.
            self._log.warning("heartbeat_vms_rejected", host=status.host, entries=rejected)
        await self._emit(self._registry.observe(status, self._monotonic(), rejected))
        await self._act(self._health.observe(status.host, status.health, status.checks, self._wall()))

    def _views(self) -> list[HostView]:
        """The hosts as reported, with the draining marks kept in KV."""
        views = self._registry.views(self._monotonic())
        marks = self._drains.marks() if self._drains is not None else {}
        return [
            msgspec.structs.replace(v, draining=True, drain_reason=marks[v.host]) if v.host in marks else v
            for v in views
        ]

    async def _act(self, verdict: Verdict) -> None:
        """Emit the health watch's events and start the evacuations it asks for."""
        await self._emit(verdict.events)
        for host, reason in verdict.evacuate:
            if self._drains is None:
                continue
            try:
                await self._drains.drain(DrainRequest(host=host, reason=reason), automatic=True)
            except FerryError as exc:
                self._log.error("evacuation_not_started", host=host, reason=exc.message)

    async def _on_session_update(self, msg: Msg) -> None:
        if self._sessions is not None:
            self._sessions.on_update(msg.subject, msg.data)

    async def _on_reconnected(self) -> None:
        self._registry.restart_clocks(self._monotonic(), grace=self._config.reconnect_grace)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            if self._nc is None or not self._nc.is_connected:
                continue
            try:
                events = self._registry.sweep(self._monotonic())
                await self._emit(events)
                for event in events:
                    if isinstance(event, HostLost):
                        await self._act(self._health.lost(event.host))
                await self._act(self._health.tick(self._wall()))
            except Exception:
                self._log.exception("sweep_failed")

    async def _emit(self, events: list[CoordinatorEvent]) -> None:
        for event in events:
            event = msgspec.structs.replace(event, at=self._wall())
            fields = msgspec.structs.asdict(event)
            kind = type(event).__struct_config__.tag
            if isinstance(event, HostLost):
                # Loud: nothing can live-migrate these VMs; someone must look at the host.
                self._log.error(kind, **fields, stranded=len(event.vms), action="not evacuated: a lost host cannot be live-migrated from")
            elif isinstance(event, (DrainGaveUp, EvacuationPending, PlacementsStopped)):
                self._log.warning(kind, **fields)
            else:
                self._log.info(kind, **fields)
            assert self._nc is not None
            try:
                await self._nc.publish(subjects.COORDINATOR_EVENTS, encode(event))
            except Exception as exc:
                self._log.warning("publish_failed", subject=subjects.COORDINATOR_EVENTS, error=str(exc))

    async def _handle_hosts(self, request: HostsRequest) -> HostsReply:
        views = self._views()
        if not request.include_lost:
            views = [v for v in views if v.state != HostState.LOST]
        return HostsReply(hosts=views)

    def _manager(self) -> SessionManager:
        if self._sessions is None:
            raise FerryError(ErrorCode.UNAVAILABLE, "the coordinator is still starting")
        return self._sessions

    async def _handle_migrate(self, request: MigrateRequest) -> SessionReply:
        return SessionReply(session=await self._manager().start(request))

    async def _handle_plan(self, request: MigrateRequest) -> PlanReply:
        return await self._manager().plan(request)

    async def _handle_sessions(self, request: SessionsRequest) -> SessionsReply:
        sessions = await self._manager().all()
        if request.vm is not None:
            sessions = [s for s in sessions if s.vm == request.vm]
        if not request.include_finished:
            sessions = [s for s in sessions if not s.state.terminal]
        return SessionsReply(sessions=sessions[-request.limit :])

    async def _handle_session(self, request: SessionRequest) -> SessionReply:
        return SessionReply(session=await self._manager().get(request.id))

    async def _handle_cancel(self, request: CancelRequest) -> SessionReply:
        return SessionReply(session=await self._manager().cancel(request.id))

    async def _handle_bandwidth(self, request: BandwidthChange) -> SessionReply:
        return SessionReply(session=await self._manager().set_bandwidth(request))

    async def _handle_limits(self, request: LimitsRequest) -> LimitsReply:
        if self._limits is None or self._sessions is None:
            raise FerryError(ErrorCode.UNAVAILABLE, "the coordinator is still starting")
        before = self._limits.current()
        reply = await self._limits.change(request)
        if reply.limits != before:
            self._log.info("limits_changed", before=msgspec.structs.asdict(before), after=msgspec.structs.asdict(reply.limits))
            self._sessions.wake()
            await self._sessions.rebalance()
        return reply

    def _drain_controller(self) -> DrainController:
        if self._drains is None:
            raise FerryError(ErrorCode.UNAVAILABLE, "the coordinator is still starting")
        return self._drains

    async def _handle_drain(self, request: DrainRequest) -> DrainReply:
        return await self._drain_controller().drain(request)

    async def _handle_undrain(self, request: UndrainRequest) -> DrainReply:
        drain: Drain = await self._drain_controller().undrain(request.host)
        return DrainReply(drain=drain)

    async def _handle_drains(self, request: DrainsRequest) -> DrainsReply:
        controller = self._drain_controller()
        if request.host is not None:
            return DrainsReply(drains=[controller.get(request.host)])
        return DrainsReply(drains=controller.all())
