"""What only the leader does, for as long as it leads: schedule and drive
sessions, step drains, watch health and evacuate.

A term is built fresh at each takeover and thrown away when it ends, so
nothing a previous term held in memory outlives it: sessions are adopted from
the store through the reconciler, drains continue from their records, the
health watch starts from the registry's last reports.
"""

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from ferry.coordinator.agents import AgentClient
from ferry.coordinator.archiver import Archiver
from ferry.coordinator.config import CoordinatorConfig
from ferry.coordinator.domain_copies import DomainCopies
from ferry.coordinator.drains import DrainController
from ferry.coordinator.fences import Fencer
from ferry.coordinator.ha_policies import HaPolicies
from ferry.coordinator.health_watch import HealthWatch, Verdict
from ferry.coordinator.host_death import Death, DeathCheck
from ferry.coordinator.kv import TypedBucket, WatchedBucket
from ferry.coordinator.limits_keeper import LimitsKeeper
from ferry.coordinator.restarts import RestartController
from ferry.coordinator.session_archive import SessionArchive
from ferry.coordinator.session_store import SessionStore, VmClaims
from ferry.coordinator.sessions import SessionManager
from ferry.coordinator.sessions.ports import Clock
from ferry.proto.api import HostState, HostView
from ferry.proto.drain import Drain, DrainRequest
from ferry.proto.errors import FerryError
from ferry.proto.events import CoordinatorEvent, HostNotFenced
from ferry.proto.ha import DomainCopy, FenceRecord, HaPolicy, Restart
from ferry.proto.host import HealthCheck, HealthState, VmState
from ferry.proto.leader import Lease

Emit = Callable[[list[CoordinatorEvent]], Awaitable[None]]
# A lost host judged alive (its agent died) or unknown is asked about again this often.
REPROBE_SECONDS = 15.0


class LeaderTerm:
    def __init__(
        self,
        lease: Lease,
        config: CoordinatorConfig,
        *,
        store: SessionStore,
        claims: VmClaims,
        agents: AgentClient,
        limits: LimitsKeeper,
        drain_records: WatchedBucket[Drain],
        fence_records: WatchedBucket[FenceRecord],
        ha_records: WatchedBucket[HaPolicy],
        domain_copies: WatchedBucket[DomainCopy],
        restart_records: TypedBucket[Restart],
        views: Callable[[], list[HostView]],
        emit: Emit,
        clock: Clock,
        locate: Callable[[str], list[str]],
        peer_uri: Callable[[str], str],
        aged_views: Callable[[], list[HostView]],
    ) -> None:
        self.lease = lease
        self._limits = limits
        self._clock = clock
        self._log = structlog.get_logger().bind(component="term", term=lease.term)
        self.sessions = SessionManager(store, claims, agents, views, emit, limits.current, clock=clock, locate=locate)
        self.drains = DrainController(drain_records, self.sessions, views, emit, config.drain, wall=clock.wall)
        self.health = HealthWatch(config.evacuation.debounce_seconds, enabled=config.evacuation.enabled)
        self._archiver = Archiver(store, SessionArchive(store.js), claims.holding_sessions, config.history, wall=clock.wall)
        self._emit = emit
        self._death = DeathCheck(agents.probe, views, peer_uri)
        self.fencer = Fencer(fence_records, config.fencing, wall=clock.wall)
        self.copies = DomainCopies(domain_copies, agents.definition, locate=locate, wall=clock.wall)
        self.restarts = RestartController(
            restart_records, self.copies, self.fencer, HaPolicies(ha_records, wall=clock.wall), agents.restart,
            agents.retire, views,
            _running_in(views, locate), limits.current, emit, holding=self.sessions.holding, wall=clock.wall,
        )
        self._views = views
        # With how long ago each host was heard from: a fence records when its host went silent.
        self._aged_views = aged_views
        # Lost hosts whose peers are being asked about them (see host_death.py).
        self._checks: dict[str, asyncio.Task] = {}
        # Fenced hosts back again: the view whose VMs were retired (a new report is looked at again).
        self._retired: dict[str, int] = {}
        evacuated = {host for host, drain in drain_records.values().items() if drain.automatic}
        for view in views():
            self.health.seed(view.host, view.health, evacuated=view.host in evacuated)

    async def run(self, warm_up: Callable[[], Awaitable[float]]) -> None:
        """Until cancelled: the term's loops. Cancelling stops every driver; what
        they were doing is in the records, for the next leader to adopt."""
        stop_listening = self._limits.listen(self._limits_changed)
        try:
            # Nothing is adopted, admitted or drained before every host had its
            # chance to report: a session must not fail `source_unreachable`
            # because this coordinator has not heard its source yet.
            warm_for = await warm_up()
            adopted = await self.sessions.adopt()
            restarts = await self.restarts.adopt()
            self._log.info("sessions_adopted", adopted=adopted, restarts=restarts, warm_up_seconds=round(warm_for, 2))
            await asyncio.gather(self.sessions.run(), self.drains.run(), self._archiver.run(), self.restarts.run())
        finally:
            stop_listening()
            for task in self._checks.values():
                task.cancel()
            await self.restarts.close()
            await self.copies.close()
            await self.sessions.close()

    def _limits_changed(self) -> None:
        self.sessions.wake()
        asyncio.create_task(self._rebalance(), name="rebalance")

    async def _rebalance(self) -> None:
        try:
            await self.sessions.rebalance()
        except Exception:
            self._log.exception("rebalance_failed")

    # ----- health -----

    async def observe_health(self, host: str, health: HealthState, checks: list[HealthCheck]) -> None:
        await self.act(self.health.observe(host, health, checks, self._clock.wall()))

    async def host_lost(self, host: str) -> None:
        await self.act(self.health.lost(host))
        if host not in self._checks:
            self._checks[host] = asyncio.create_task(self._probe_lost(host), name=f"probe-{host}")

    async def _probe_lost(self, host: str) -> None:
        """Is it dead, or only its agent? The peers say (a host_probed event when the
        verdict changes). Asked again while the host stays lost: a host whose agent
        died may die itself later, and a verdict of `unknown` may clear."""
        try:
            said = None
            while True:
                event = await self._death.check(host)
                if event.verdict != said:
                    log = self._log.error if event.verdict == Death.ALIVE else self._log.warning
                    log("host_probed", host=host, verdict=event.verdict, reason=event.reason, peers=event.peers)
                    await self._emit([event])
                    said = event.verdict
                if event.verdict == Death.UNREACHABLE:
                    await self._fence(host)
                    return
                await self._clock.sleep(REPROBE_SECONDS)
                view = next((v for v in self._views() if v.host == host), None)
                if view is None or view.state != HostState.LOST:
                    return
        except Exception:
            self._log.exception("host_probe_failed", host=host)
        finally:
            self._checks.pop(host, None)

    async def _fence(self, host: str) -> None:
        fenced = await self.fencer.fence(host, self._aged_views())
        if isinstance(fenced, HostNotFenced):
            # Loud: its VMs may still run there, and nothing restarts them elsewhere.
            self._log.error("host_not_fenced", host=host, reason=fenced.reason)
        else:
            self._log.warning("host_fenced", host=host, by=fenced.by, reason=fenced.reason, seconds=fenced.seconds)
        await self._emit([fenced])
        await self.restarts.plan(host)

    def _retire_returned(self, views: list[HostView]) -> None:
        dead = self.fencer.dead_hosts()
        if not dead:
            return
        for view in views:
            if view.host in dead and view.state != HostState.LOST and self._retired.get(view.host) != id(view):
                self._retired[view.host] = id(view)
                asyncio.create_task(self._retire(view), name=f"retire-{view.host}")

    async def _retire(self, view: HostView) -> None:
        try:
            await self.restarts.retire_returned(view)
        except FerryError as exc:
            self._retired.pop(view.host, None)  # asked again at the next sweep
            self._log.warning("retire_not_done", host=view.host, reason=exc.message)
        except Exception:
            self._retired.pop(view.host, None)
            self._log.exception("retire_not_done", host=view.host)

    async def announce(self, event: CoordinatorEvent) -> None:
        """An event of the leader's own (a limits change through the API)."""
        await self._emit([event])

    async def tick(self) -> None:
        self.sessions.refresh_placement()
        views = self._views()
        self.copies.refresh(views)
        self._retire_returned(views)
        await self.act(self.health.tick(self._clock.wall()))

    async def act(self, verdict: Verdict) -> None:
        """Emit the health watch's events and start the evacuations it asks for."""
        await self._emit(verdict.events)
        for host, reason in verdict.evacuate:
            try:
                await self.drains.drain(DrainRequest(host=host, reason=reason), automatic=True)
            except FerryError as exc:
                self._log.error("evacuation_not_started", host=host, reason=exc.message)


def _running_in(views: Callable[[], list[HostView]], locate: Callable[[str], list[str]]) -> Callable[[str], list[str]]:
    """The hosts that report a VM running (or paused) and are not lost: where it runs now.
    A lost host's last report, and a returned host's shut-off definition, do not count."""

    def running_on(vm: str) -> list[str]:
        listed = set(locate(vm))
        if not listed:
            return []
        return [
            v.host
            for v in views()
            if v.host in listed and v.state != HostState.LOST
            and any(info.name == vm and info.state in (VmState.RUNNING, VmState.PAUSED) for info in v.vms)
        ]

    return running_on
