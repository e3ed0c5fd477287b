"""The coordinator daemon. Every coordinator keeps the registry from heartbeats,
follows limits and drain records in KV, answers the API and takes part in the
leader lease; the one that leads also runs a LeaderTerm (coordinator/term.py):
sessions, drains, health and evacuation."""

import asyncio
import socket
import time
from collections.abc import Callable

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from ferry.coordinator.agents import AgentClient
from ferry.coordinator.api import Api
from ferry.coordinator.config import CoordinatorConfig
from ferry.coordinator.cordons import open_cordon_records, with_cordons
from ferry.coordinator.domain_copies import open_domain_copies
from ferry.coordinator.drains import draining_marks, open_drain_records
from ferry.coordinator.fences import fenced_marks, open_fence_records
from ferry.coordinator.ha_policies import open_ha_records
from ferry.coordinator.history_streams import open_history_streams
from ferry.coordinator.kv import TypedBucket, WatchedBucket, open_bucket, replicas_for
from ferry.coordinator.leadership import Leadership
from ferry.coordinator.lease import Timing
from ferry.coordinator.limits_keeper import BUCKET as SETTINGS_BUCKET
from ferry.coordinator.limits_keeper import LimitsKeeper
from ferry.coordinator.metrics import CoordinatorMetrics, take_snapshot
from ferry.coordinator.rate_limit import RateLimit
from ferry.coordinator.registry import MAX_HOSTS, Registry
from ferry.coordinator.restarts import open_restart_records
from ferry.coordinator.session_store import SessionStore, VmClaims
from ferry.coordinator.sessions.ports import Clock
from ferry.coordinator.term import LeaderTerm
from ferry.proto import subjects
from ferry.proto.api import Cordon, HostView
from ferry.proto.codec import encode
from ferry.proto.drain import Drain
from ferry.proto.errors import FerryError
from ferry.proto.events import (
    CoordinatorEvent,
    DrainGaveUp,
    EvacuationPending,
    HeartbeatRefused,
    HostLost,
    LeaderElected,
    PlacementsStopped,
)
from ferry.proto.ha import FenceRecord
from ferry.proto.host import HostBeat, ReportRequest, StatusDecoder
from ferry.proto.leader import Lease
from ferry.proto.limits import Limits
from ferry.runtime.connection import connect, disconnect
from ferry.runtime.systemd import Notifier
from ferry.runtime.version import VERSION

SWEEP_SECONDS = 0.25
# An agent is asked for its full report at most this often (a short beat that
# names a report this coordinator does not hold, or an agent still sending full ones).
REPORT_ASK_SECONDS = 5.0
# Before a term adopts sessions: one heartbeat round since this process
# connected, at least this long, plus a margin.
MIN_WARM_UP_SECONDS = 1.0
WARM_UP_MARGIN_SECONDS = 0.5
# A term that does not end within this after it is cancelled is left behind (logged).
TERM_STOP_SECONDS = 10.0


def coordinator_name(config: CoordinatorConfig) -> str:
    return config.name or socket.gethostname()


class Coordinator:
    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
    ) -> None:
        self._config = config
        self._notifier = notifier if notifier is not None else Notifier.from_environ()
        self.name = coordinator_name(config)
        self._clock = Clock(wall=wall, monotonic=monotonic)
        self._log = structlog.get_logger().bind(component="coordinator", coordinator=self.name)
        self._registry = Registry(
            timeout_factor=config.heartbeat_timeout_factor,
            timeout=config.heartbeat_timeout or None,
        )
        self._status_decoder = StatusDecoder()
        self._report_asks = RateLimit(REPORT_ASK_SECONDS, capacity=MAX_HOSTS)
        self._nc: Client | None = None
        self._term: LeaderTerm | None = None
        self._term_task: asyncio.Task | None = None
        self._leadership: Leadership | None = None
        self._drain_records: WatchedBucket[Drain] | None = None
        self._cordon_records: WatchedBucket[Cordon] | None = None
        self._fence_records: WatchedBucket[FenceRecord] | None = None
        self._connected_at = monotonic()
        self._new_term: Callable[[Lease], LeaderTerm] | None = None
        self._metrics = CoordinatorMetrics(config.metrics_address, lambda: take_snapshot(self), self.name)

    # ----- what every coordinator has -----

    @property
    def term(self) -> LeaderTerm | None:
        """The term this coordinator runs, while it still holds the lease."""
        leadership = self._leadership
        if self._term is None or leadership is None or not leadership.leading:
            return None
        return self._term

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def leadership(self) -> Leadership | None:
        return self._leadership

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def nc(self) -> Client:
        assert self._nc is not None
        return self._nc

    def views(self) -> list[HostView]:
        """The hosts as reported, with the draining and cordon marks KV holds."""
        return self._marked(self._registry.views(self._clock.monotonic()))

    def current_views(self) -> list[HostView]:
        """As `views`, without `last_seen_age`, and the same objects from one call
        to the next while nothing changed: what placement reads, thousands at a time."""
        return self._marked(self._registry.current_views())

    def with_ages(self, views: list[HostView]) -> list[HostView]:
        """These views with how long ago each host was heard from."""
        return self._registry.with_ages(views, self._clock.monotonic())

    def _peer_uri(self, host: str) -> str:
        """The libvirt URI a host's last report gave for its peers ("" when unknown)."""
        record = self._registry.get(host)
        return record.status.peer_uri if record is not None else ""

    def _marked(self, views: list[HostView]) -> list[HostView]:
        marks = draining_marks(self._drain_records) if self._drain_records is not None else {}
        if self._fence_records is not None:
            # A fenced host stays out of placement, also once it reports again, until an operator undrains it.
            marks = fenced_marks(self._fence_records) | marks
        cordons = self._cordon_records.values() if self._cordon_records is not None else {}
        if not marks and not cordons:
            return views
        return with_cordons(
            [msgspec.structs.replace(v, draining=True, drain_reason=marks[v.host]) if v.host in marks else v for v in views],
            cordons,
        )

    async def run(self, stop: asyncio.Event) -> None:
        nc = self._nc = await connect(
            self._config.nats, name=f"ferry-coordinator {self.name}", log=self._log, on_reconnected=self._on_reconnected
        )
        self._connected_at = self._clock.monotonic()
        watched: list = []
        try:
            js = nc.jetstream()
            replicas = replicas_for(nc._server_info, self._config.kv_replicas)
            store = await SessionStore.open(js, replicas=replicas)
            await open_history_streams(js, self._config.history, replicas=replicas)
            claims = await VmClaims.open(js, store, replicas=replicas)
            settings = await open_bucket(js, SETTINGS_BUCKET, "Ferry: settings changed at runtime", replicas=replicas)
            limits = LimitsKeeper(TypedBucket(settings, Limits, "setting"), self._config.limits)
            drain_records = self._drain_records = await open_drain_records(js, replicas=replicas)
            cordon_records = self._cordon_records = await open_cordon_records(js, replicas=replicas)
            ha_records = await open_ha_records(js, replicas=replicas)
            fence_records = self._fence_records = await open_fence_records(js, replicas=replicas)
            domain_copies = await open_domain_copies(js, replicas=replicas)
            restart_records = await open_restart_records(js, replicas=replicas)
            for part in (limits, drain_records, cordon_records, ha_records, fence_records, domain_copies):
                await part.start()
                watched.append(part)
            leadership = self._leadership = await Leadership.open(
                js, self.name, _timing(self._config), replicas=replicas,
                monotonic=self._clock.monotonic, wall=self._clock.wall,
            )
            agents = AgentClient(nc, timeout=self._config.agent_timeout)

            def new_term(lease: Lease) -> LeaderTerm:
                return LeaderTerm(
                    lease, self._config, store=store, claims=claims, agents=agents, limits=limits,
                    drain_records=drain_records, fence_records=fence_records, ha_records=ha_records,
                    domain_copies=domain_copies, restart_records=restart_records, views=self.current_views, emit=self._emit,
                    clock=self._clock,
                    locate=self._registry.reporting, peer_uri=self._peer_uri, aged_views=self.views,
                )

            self._new_term = new_term
            api = Api(self, store, limits, drain_records, cordon_records, ha_records, restart_records, domain_copies)
            await nc.subscribe(subjects.ALL_HOST_STATUS, cb=self._on_status)
            await nc.subscribe(subjects.ALL_HOST_SESSIONS, cb=self._on_session_update)
            async with api.serve(nc):
                self._log.info(
                    "coordinator_started", version=VERSION, kv_replicas=replicas,
                    limits=msgspec.structs.asdict(limits.current()),
                )
                # Config read, NATS connected, buckets open, API served: ready for systemd.
                self._notifier.ready(self._systemd_status())
                started_at = self._clock.wall()
                loops = [
                    asyncio.create_task(self._sweep_loop(), name="sweep"),
                    asyncio.create_task(self._notifier.keep_alive(self._systemd_status), name="systemd"),
                    asyncio.create_task(self._metrics.run(), name="metrics"),
                    asyncio.create_task(
                        leadership.run(
                            lambda lease, reason, previous: self._gain(lease, reason, previous, api),
                            lambda reason: self._lose(reason, api),
                            started_at, VERSION, self._server,
                        ),
                        name="leadership",
                    ),
                ]
                await stop.wait()
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
                await self._end_term("stopping")
                await api.stop_leading()
                await leadership.release()
        finally:
            for part in watched:
                await part.close()
            await disconnect(nc)
            self._log.info("coordinator_stopped")

    def _systemd_status(self) -> str:
        """`systemctl status` shows this line."""
        term = self.term
        role = f"leading (term {term.lease.term})" if term is not None else "standby"
        return f"{role}, {len(self._registry)} hosts"

    def _server(self) -> str:
        url = self._nc.connected_url if self._nc is not None else None
        return str(url.netloc) if url else ""

    # ----- leadership -----

    async def _gain(self, lease: Lease, reason: str, previous: str, api: "Api") -> None:
        await self._end_term("a new term begins")
        assert self._new_term is not None
        term = self._term = self._new_term(lease)
        term.sessions.on_end(self._metrics.session_ended)
        term.sessions.on_admission_pass(self._metrics.admission_pass)
        term.restarts.on_end(self._metrics.restart_ended)
        self._term_task = asyncio.create_task(self._run_term(term), name=f"term-{lease.term}")
        await api.start_leading()
        await self._emit([LeaderElected(leader=self.name, term=lease.term, reason=reason, previous=previous)])

    async def _lose(self, reason: str, api: "Api") -> None:
        await api.stop_leading()
        await self._end_term(reason)

    async def _run_term(self, term: LeaderTerm) -> None:
        try:
            await term.run(self._warm_up)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A term that fails must not leave a leader that does nothing: give the lease up.
            self._log.exception("term_failed", term=term.lease.term)
            if self._leadership is not None:
                await self._leadership.release()

    async def _end_term(self, reason: str) -> None:
        task, self._term_task, self._term = self._term_task, None, None
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=TERM_STOP_SECONDS)
        if not done:
            self._log.error("term_did_not_stop", reason=reason, after_seconds=TERM_STOP_SECONDS)
        else:
            self._log.info("term_ended", reason=reason)

    async def _warm_up(self) -> float:
        """Until one heartbeat round has passed since this process connected: the
        longest interval a host announced (about 2 s by default) plus a margin,
        never past `warm_up_max`. A standby that takes over is warm already."""
        while True:
            elapsed = self._clock.monotonic() - self._connected_at
            round_seconds = max(self._registry.longest_interval(), MIN_WARM_UP_SECONDS) + WARM_UP_MARGIN_SECONDS
            if elapsed >= min(round_seconds, self._config.warm_up_max):
                return elapsed
            await asyncio.sleep(0.1)

    # ----- heartbeats, session updates, the sweep -----

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
        now = self._clock.monotonic()
        if isinstance(status, HostBeat):
            matched, events = self._registry.beat(status, now)
            await self._emit(events)
            if not matched:
                await self._ask_report(status.host, now)
            elif (term := self.term) is not None and (record := self._registry.get(status.host)) is not None:
                await term.observe_health(status.host, record.status.health, record.status.checks)
            return
        if status.digest and not status.short_beats:
            await self._ask_report(status.host, now)  # and say short beats are understood here
        previous = self._registry.get(status.host)
        if rejected and (previous is None or previous.rejected_vms != rejected):
            # Once per change, not once per heartbeat: the host stays, these VMs are left out.
            self._log.warning("heartbeat_vms_rejected", host=status.host, entries=rejected)
        await self._emit(self._registry.observe(status, now, rejected))
        term = self.term
        if term is not None and self._registry.believed(status):
            await term.observe_health(status.host, status.health, status.checks)

    async def _ask_report(self, host: str, now: float) -> None:
        """Ask an agent for its full report (at most once per REPORT_ASK_SECONDS per host)."""
        if not self._report_asks.due(host, now):
            return
        try:
            await self.nc.publish(subjects.agent_verb(host, "report"), encode(ReportRequest()))
        except Exception as exc:
            self._log.warning("publish_failed", subject=subjects.agent_verb(host, "report"), error=str(exc))

    async def _on_session_update(self, msg: Msg) -> None:
        term = self.term
        if term is not None:
            term.sessions.on_update(msg.subject, msg.data)

    async def _on_reconnected(self) -> None:
        self._registry.restart_clocks(self._clock.monotonic(), grace=self._config.reconnect_grace)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            if self._nc is None or not self._nc.is_connected:
                continue
            try:
                events = self._registry.sweep(self._clock.monotonic())
                await self._emit(events)
                term = self.term
                if term is None:
                    continue
                for event in events:
                    if isinstance(event, HostLost):
                        await term.host_lost(event.host)
                await term.tick()
            except Exception:
                self._log.exception("sweep_failed")

    async def _emit(self, events: list[CoordinatorEvent]) -> None:
        """Log and publish events; only the leader does, so each is announced once."""
        if not events or self.term is None:
            return
        for event in events:
            event = msgspec.structs.replace(event, at=self._clock.wall())
            fields = msgspec.structs.asdict(event)
            kind = type(event).__struct_config__.tag
            if isinstance(event, HostLost):
                # Loud: nothing can live-migrate these VMs; someone must look at the host.
                self._log.error(kind, **fields, stranded=len(event.vms), action="not evacuated: a lost host cannot be live-migrated from")
            elif isinstance(event, (DrainGaveUp, EvacuationPending, PlacementsStopped, HeartbeatRefused)):
                self._log.warning(kind, **fields)
            else:
                self._log.info(kind, **fields)
            try:
                await self.nc.publish(subjects.COORDINATOR_EVENTS, encode(event))
            except Exception as exc:
                self._log.warning("publish_failed", subject=subjects.COORDINATOR_EVENTS, error=str(exc))


def _timing(config: CoordinatorConfig) -> Timing:
    leader = config.leader
    return Timing(renew_every=leader.renew_every, lease_seconds=leader.lease_seconds, step_down_after=leader.step_down_after)

