"""The coordinator API (`ferry.api.<verb>`), served by every coordinator.

Reads are answered by whichever coordinator gets them, from its registry and
from KV. Verbs that change something are the leader's: a standby forwards them
to `ferry.coordinator.leader.<verb>`, which only the leader serves, and relays
the answer; with no leader at that moment the caller gets `no_leader` (the
client tries again for a few seconds, the length of a takeover).
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.service import Service

from ferry.coordinator import cordons as cordons_module
from ferry.coordinator import domain_copies as domain_copies_module
from ferry.coordinator import drains as drain_records_module
from ferry.coordinator import fences as fences_module
from ferry.coordinator import ha_policies as ha_policies_module
from ferry.coordinator import leadership as leadership_module
from ferry.coordinator import limits_keeper, session_store
from ferry.coordinator import restarts as restarts_module
from ferry.coordinator.cordons import Cordons
from ferry.coordinator.drains import draining_marks, find_drain
from ferry.coordinator.event_history import EventHistory
from ferry.coordinator.ha_policies import HaPolicies
from ferry.coordinator.host_pages import hosts_page, reply_budget
from ferry.coordinator.kv import TypedBucket, WatchedBucket, replicas_of
from ferry.coordinator.limits_keeper import LimitsKeeper
from ferry.coordinator.restarts import read_restarts
from ferry.coordinator.session_archive import SessionArchive
from ferry.coordinator.session_store import SessionStore, claim_key
from ferry.coordinator.sessions.cancel_target import needs_sessions, session_to_cancel
from ferry.coordinator.term import LeaderTerm
from ferry.proto import subjects
from ferry.proto.api import (
    BandwidthChange,
    CancelRequest,
    Cordon,
    CordonReply,
    CordonRequest,
    DowntimeChange,
    ForceCompleteRequest,
    HostsReply,
    HostsRequest,
    HostState,
    MigrateRequest,
    PlanReply,
    SessionReply,
    SessionRequest,
    SessionsReply,
    SessionsRequest,
    UncordonRequest,
)
from ferry.proto.codec import encode, request_decoder
from ferry.proto.drain import Drain, DrainReply, DrainRequest, DrainsReply, DrainsRequest, DrainState, UndrainRequest
from ferry.proto.errors import ErrorCode, ErrorReply, FerryError
from ferry.proto.events import HostUndrained, LimitsChanged
from ferry.proto.ha import (
    ConfirmDeadRequest,
    DefinitionKept,
    DomainCopy,
    FenceReply,
    HaDefaultRequest,
    HaPolicy,
    HaReply,
    HaRequest,
    HaSetRequest,
    Restart,
    RestartsReply,
    RestartsRequest,
)
from ferry.proto.history import EventsReply, EventsRequest
from ferry.proto.leader import BucketView, MemberView, Role, StatusReply, StatusRequest
from ferry.proto.limits import LimitsReply, LimitsRequest
from ferry.runtime.service import endpoint
from ferry.runtime.version import VERSION

if TYPE_CHECKING:
    from ferry.coordinator.daemon import Coordinator

# A forwarded request may take the leader a while (a dry run measures guests).
FORWARD_TIMEOUT = 30.0
# `ferry status` leaves out coordinators silent for longer than this.
MEMBER_FORGOTTEN_SECONDS = 600.0
BUCKETS = (
    session_store.BUCKET,
    session_store.CLAIMS_BUCKET,
    drain_records_module.BUCKET,
    limits_keeper.BUCKET,
    leadership_module.BUCKET,
    cordons_module.BUCKET,
    ha_policies_module.BUCKET,
    fences_module.BUCKET,
    domain_copies_module.BUCKET,
    restarts_module.BUCKET,
)

_ERROR = msgspec.json.Decoder(ErrorReply)

# A write verb as the leader's term answers it: (term, request, caller).
Local = Callable[[LeaderTerm, Any, str], Awaitable[Any]]


class Api:
    def __init__(
        self,
        coordinator: "Coordinator",
        store: SessionStore,
        limits: LimitsKeeper,
        drain_records: WatchedBucket[Drain],
        cordon_records: WatchedBucket[Cordon],
        ha_records: WatchedBucket[HaPolicy],
        restart_records: TypedBucket[Restart],
        domain_copies: WatchedBucket[DomainCopy],
    ) -> None:
        self._coordinator = coordinator
        self._store = store
        self._limits = limits
        self._drains = drain_records
        self._cordons = Cordons(cordon_records, wall=coordinator.clock.wall)
        self._ha = HaPolicies(ha_records, wall=coordinator.clock.wall)
        self._restarts = restart_records
        self._copies = domain_copies
        self._log = structlog.get_logger().bind(component="api", coordinator=coordinator.name)
        self._leader_service: Service | None = None
        self._nc: Client | None = None
        # The verbs that change something, answered by the leader's term.
        self._writes: dict[str, tuple[type, Local]] = {
            "migrate": (MigrateRequest, self._migrate),
            "plan": (MigrateRequest, self._plan),
            "cancel": (CancelRequest, self._cancel),
            "bandwidth": (BandwidthChange, self._bandwidth),
            "drain": (DrainRequest, self._drain),
            "undrain": (UndrainRequest, self._undrain),
            "set_limits": (LimitsRequest, self._change_limits),
            "cordon": (CordonRequest, self._cordon),
            "uncordon": (UncordonRequest, self._uncordon),
            "force_complete": (ForceCompleteRequest, self._force_complete),
            "downtime": (DowntimeChange, self._downtime),
            "ha_set": (HaSetRequest, self._ha_set),
            "ha_default": (HaDefaultRequest, self._ha_default),
            "confirm_dead": (ConfirmDeadRequest, self._confirm_dead),
        }

    @asynccontextmanager
    async def serve(self, nc: Client) -> AsyncIterator[None]:
        self._nc = nc
        service = await add_service(
            nc, name="ferry-coordinator", version=VERSION,
            description="Ferry coordinator: hosts, placement, migration sessions",
        )
        async with service:
            reads: dict[str, tuple[type, Callable[[Any], Awaitable[Any]]]] = {
                "hosts": (HostsRequest, self._hosts),
                "sessions": (SessionsRequest, self._sessions),
                "session": (SessionRequest, self._session),
                "drains": (DrainsRequest, self._list_drains),
                "status": (StatusRequest, self._status),
                "limits": (LimitsRequest, self._limits_verb),
                "events": (EventsRequest, self._events),
                "ha": (HaRequest, self._ha_read),
                "restarts": (RestartsRequest, self._restarts_read),
            }
            assert set(reads) == set(subjects.READ_VERBS) and set(self._writes) == set(subjects.WRITE_VERBS)
            for verb, (type_, handler) in reads.items():
                await self._add(service, verb, type_, lambda request, _caller, handler=handler: handler(request))
            for verb, (type_, local) in self._writes.items():
                await self._add(service, verb, type_, self._leader_or_forward(verb, local))
            yield

    async def _add(self, service: Service, verb: str, type_: type, handler: Callable[[Any, str], Awaitable[Any]]) -> None:
        """One verb, for any caller (`ferry.api.*.<verb>`) and through this coordinator by name."""
        answer = endpoint(request_decoder(type_, verb), handler, log=self._log, verb=verb, with_caller=True)
        for subject in (
            subjects.api(verb, caller=subjects.CALLER),
            subjects.via_api(self._coordinator.name, verb, caller=subjects.CALLER),
        ):
            await service.add_endpoint(name=verb, subject=subject, handler=answer)

    # ----- the leader's own subjects -----

    async def start_leading(self) -> None:
        """Serve `ferry.coordinator.leader.<verb>` while this coordinator leads."""
        if self._leader_service is not None or self._nc is None:
            return
        service = await add_service(
            self._nc, name="ferry-leader", version=VERSION, description="Ferry: the leading coordinator's verbs"
        )
        for verb, (type_, local) in self._writes.items():
            await service.add_endpoint(
                name=verb, subject=subjects.leader_api(verb, caller=subjects.CALLER),
                handler=endpoint(
                    request_decoder(type_, verb), self._as_leader(local), log=self._log, verb=verb, with_caller=True
                ),
            )
        self._leader_service = service

    async def stop_leading(self) -> None:
        service, self._leader_service = self._leader_service, None
        if service is not None:
            try:
                await service.stop()
            except Exception as exc:  # NATS away: the subscriptions went with the connection
                self._log.info("leader_service_not_stopped", error=str(exc) or type(exc).__name__)

    def _as_leader(self, local: Local) -> Callable[[Any, str], Awaitable[Any]]:
        async def handle(request: Any, caller: str) -> Any:
            term = self._coordinator.term
            if term is None:
                raise FerryError(ErrorCode.NO_LEADER, f"{self._coordinator.name} no longer leads; try again")
            return await local(term, request, caller)

        return handle

    def _leader_or_forward(self, verb: str, local: Local) -> Callable[[Any, str], Awaitable[Any]]:
        async def handle(request: Any, caller: str) -> Any:
            term = self._coordinator.term
            if term is not None:
                return await local(term, request, caller)
            return await self._forward(verb, request, caller)

        return handle

    async def _forward(self, verb: str, request: Any, caller: str) -> msgspec.Raw:
        """To the leader, under the caller's token: only coordinators may publish
        there, so the leader records who asked as this coordinator saw it."""
        assert self._nc is not None
        try:
            msg = await self._nc.request(subjects.leader_api(verb, caller=caller), encode(request), timeout=FORWARD_TIMEOUT)
        except nats.errors.NoRespondersError:
            raise FerryError(ErrorCode.NO_LEADER, self._no_leader()) from None
        except nats.errors.TimeoutError:
            raise FerryError(
                ErrorCode.TIMEOUT, f"the leader {self._leader_name() or '?'} did not answer {verb} within {FORWARD_TIMEOUT:g} s"
            ) from None
        try:
            error = _ERROR.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return msgspec.Raw(msg.data)
        raise FerryError(error.code, error.message)

    def _no_leader(self) -> str:
        leadership = self._coordinator.leadership
        lease = leadership.lease if leadership is not None else None
        if lease is None:
            return "no coordinator leads yet; one takes the lease within a second or two"
        return (
            f"no coordinator leads right now: {lease.holder}'s lease (term {lease.term}) has not been renewed "
            f"for {leadership.lapsed_for():.1f} s; a standby takes over after {lease.lease_seconds:g} s"
        )

    def _leader_name(self) -> str:
        """The coordinator leading now, as far as this one knows ("" when none)."""
        leadership = self._coordinator.leadership
        if leadership is None or leadership.lease is None:
            return ""
        if leadership.leading:
            return self._coordinator.name
        lease = leadership.lease
        return lease.holder if leadership.lapsed_for() < lease.lease_seconds else ""

    # ----- reads -----

    async def _hosts(self, request: HostsRequest) -> HostsReply:
        coordinator = self._coordinator
        # The page is chosen among the views as built (nothing copied for 5,000 hosts),
        # then only its own hosts get their heartbeat age.
        page = hosts_page(
            coordinator.current_views(), request, leader=self._leader_name(), answered_by=coordinator.name,
            max_bytes=reply_budget(coordinator.nc.max_payload),
        )
        return msgspec.structs.replace(page, hosts=coordinator.with_ages(page.hosts))

    async def _sessions(self, request: SessionsRequest) -> SessionsReply:
        # The hot bucket whole (running and recently finished: small), the archive only as far as the page needs.
        term = self._coordinator.term
        hot = await term.sessions.all() if term is not None else await self._store.all()
        return await SessionArchive(self._store.js).page(hot, request)

    async def _session(self, request: SessionRequest) -> SessionReply:
        term = self._coordinator.term
        try:
            if term is not None:
                return SessionReply(session=await term.sessions.get(request.id))
            session, _ = await self._store.get(request.id)
            return SessionReply(session=session)
        except FerryError as exc:
            if exc.code != ErrorCode.NOT_FOUND:
                raise
        archived = await SessionArchive(self._store.js).find(request.id)
        if archived is None:
            raise FerryError(ErrorCode.NOT_FOUND, f"there is no session {request.id}")
        return SessionReply(session=archived)

    async def _events(self, request: EventsRequest) -> EventsReply:
        return await EventHistory(self._coordinator.nc.jetstream()).read(request)

    async def _list_drains(self, request: DrainsRequest) -> DrainsReply:
        if request.host is not None:
            return DrainsReply(drains=[find_drain(self._drains, request.host)])
        return DrainsReply(drains=list(self._drains.values().values()))

    async def _limits_verb(self, request: LimitsRequest) -> LimitsReply:
        if request != LimitsRequest():
            # A separate verb, so that permissions can let viewers read limits but not change them.
            raise FerryError(ErrorCode.BAD_REQUEST, "limits only reads the limits; changes go to set_limits (ferry limits --cluster N ...)")
        return self._limits.reply()

    async def _status(self, _request: StatusRequest) -> StatusReply:
        coordinator = self._coordinator
        leadership = coordinator.leadership
        wall = coordinator.clock.wall()
        lease = leadership.lease if leadership is not None else None
        members = await leadership.members() if leadership is not None else []
        info = coordinator.nc._server_info
        views = coordinator.views()
        return StatusReply(
            answered_by=coordinator.name,
            role=Role.LEADER if coordinator.term is not None else Role.STANDBY,
            leader=lease if self._leader_name() else None,
            lease_age=round(wall - lease.renewed_at, 3) if lease is not None else None,
            coordinators=[
                MemberView(
                    # The role by the lease, not by the member's own last word (it may have died leading).
                    name=m.name, role=Role.LEADER if m.name == self._leader_name() else Role.STANDBY,
                    version=m.version, started_at=m.started_at, seen_age=round(wall - m.seen_at, 3), server=m.server,
                )
                for m in sorted(members, key=lambda m: m.name)
                if wall - m.seen_at < MEMBER_FORGOTTEN_SECONDS
            ],
            nats_server=str(coordinator.nc.connected_url.netloc) if coordinator.nc.connected_url else "",
            nats_cluster=str(info.get("cluster") or ""),
            nats_servers=sorted(set(info.get("connect_urls") or [])),
            buckets=await self._buckets(),
            hosts_up=sum(1 for v in views if v.state == HostState.UP),
            hosts_lost=sum(1 for v in views if v.state == HostState.LOST),
            draining=sorted(draining_marks(self._drains)),
            limits=self._limits.current(),
        )

    async def _buckets(self) -> list[BucketView]:
        js = self._coordinator.nc.jetstream()

        async def one(name: str) -> BucketView | None:
            try:
                replicas, current, leader = await asyncio.wait_for(replicas_of(js, name), 2.0)
            except Exception:
                return None
            return BucketView(name=name, replicas=replicas, current=current, leader=leader)

        found = await asyncio.gather(*(one(name) for name in BUCKETS))
        return [b for b in found if b is not None]

    # ----- writes (the leader's term) -----

    async def _migrate(self, term: LeaderTerm, request: MigrateRequest, caller: str) -> SessionReply:
        return SessionReply(session=await term.sessions.start(request, requested_by=caller))

    async def _plan(self, term: LeaderTerm, request: MigrateRequest, _caller: str) -> PlanReply:
        return await term.sessions.plan(request)

    async def _cancel(self, term: LeaderTerm, request: CancelRequest, caller: str) -> SessionReply:
        # Resolved on the leader, in the one request: a VM's session cannot change between lookup and cancel
        # unseen (a session that ends meanwhile is answered `conflict: already ended`).
        session_id = session_to_cancel(request, await term.sessions.all() if needs_sessions(request) else [])
        return SessionReply(session=await term.sessions.cancel(session_id, by=caller))

    async def _bandwidth(self, term: LeaderTerm, request: BandwidthChange, caller: str) -> SessionReply:
        self._log.info("bandwidth_change", session_id=request.id, by=caller)
        return SessionReply(session=await term.sessions.set_bandwidth(request))

    async def _cordon(self, term: LeaderTerm, request: CordonRequest, caller: str) -> CordonReply:
        reply, event = await self._cordons.cordon(request, [v.host for v in self._coordinator.views()], by=caller)
        if event is not None:
            self._log.info("host_cordoned", host=request.host, reason=request.reason, by=caller)
            await term.announce(event)
        return reply

    async def _uncordon(self, term: LeaderTerm, request: UncordonRequest, caller: str) -> CordonReply:
        reply, event = await self._cordons.uncordon(request.host, by=caller)
        self._log.info("host_uncordoned", host=request.host, by=caller)
        await term.announce(event)
        # Queued sessions may have waited for room that this host has.
        term.sessions.wake()
        return reply

    async def _ha_read(self, request: HaRequest) -> HaReply:
        reply = self._ha.read(request.vms)
        kept = [copy for p in reply.policies if (copy := self._copies.get(claim_key(p.vm))) is not None]
        return msgspec.structs.replace(
            reply, definitions=[DefinitionKept(vm=c[0].vm, host=c[0].host, at=c[0].at) for c in kept]
        )

    async def _ha_set(self, term: LeaderTerm, request: HaSetRequest, caller: str) -> HaReply:
        known = bool(self._coordinator.registry.reporting(request.vm))
        reply, event = await self._ha.set(request.vm, request.priority, known=known, by=caller)
        if event is not None:
            self._log.info("ha_policy_set", vm=request.vm, priority=str(request.priority), by=caller)
            await term.announce(event)
        return reply

    async def _ha_default(self, term: LeaderTerm, request: HaDefaultRequest, caller: str) -> HaReply:
        reply, event = await self._ha.set_default(request.priority, by=caller)
        if event is not None:
            self._log.info("ha_default_set", priority=str(request.priority), by=caller)
            await term.announce(event)
        return reply

    async def _confirm_dead(self, term: LeaderTerm, request: ConfirmDeadRequest, caller: str) -> FenceReply:
        reply, event = await term.fencer.confirm_dead(request.host, self._coordinator.views(), by=caller, reason=request.reason)
        self._log.warning("host_confirmed_dead", host=request.host, by=caller, reason=request.reason)
        await term.announce(event)
        await term.restarts.plan(request.host)
        return reply

    async def _restarts_read(self, request: RestartsRequest) -> RestartsReply:
        return RestartsReply(restarts=await read_restarts(self._restarts, request.host, request.limit))

    async def _force_complete(self, term: LeaderTerm, request: ForceCompleteRequest, caller: str) -> SessionReply:
        self._log.info("force_complete", session_id=request.id, by=caller)
        return SessionReply(session=await term.sessions.force_complete(request.id, by=caller))

    async def _downtime(self, term: LeaderTerm, request: DowntimeChange, caller: str) -> SessionReply:
        self._log.info("downtime_change", session_id=request.id, max_downtime_ms=request.max_downtime_ms, by=caller)
        return SessionReply(session=await term.sessions.set_downtime(request, by=caller))

    async def _drain(self, term: LeaderTerm, request: DrainRequest, caller: str) -> DrainReply:
        return await term.drains.drain(request, requested_by=caller)

    async def _undrain(self, term: LeaderTerm, request: UndrainRequest, caller: str) -> DrainReply:
        fence = term.fencer.record(request.host)
        fenced = fence is not None and fence.state.dead
        if fenced:
            await term.fencer.clear(request.host)
            self._log.warning("fenced_host_let_back", host=request.host, by=caller)
        try:
            return DrainReply(drain=await term.drains.undrain(request.host, by=caller))
        except FerryError as exc:
            if not fenced or exc.code != ErrorCode.NOT_FOUND:
                raise
        # Fenced, not drained: what kept it out of placement was the fence.
        assert fence is not None
        now = self._coordinator.clock.wall()
        await term.announce(HostUndrained(host=request.host, cancelled=0, by=caller))
        term.sessions.wake()
        return DrainReply(drain=Drain(
            host=request.host, state=DrainState.DONE, started_at=fence.at, updated_at=now, reason=fence.reason,
            automatic=True, requested_by=fence.by, finished_at=now,
        ))

    async def _change_limits(self, term: LeaderTerm, request: LimitsRequest, caller: str) -> LimitsReply:
        before = self._limits.current()
        reply = await self._limits.change(request)
        if reply.limits != before:
            # The term reacts through the limits' listener (as it would to any writer).
            self._log.info(
                "limits_changed", by=caller,
                before=msgspec.structs.asdict(before), after=msgspec.structs.asdict(reply.limits),
            )
            await term.announce(LimitsChanged(by=caller, before=before, after=reply.limits))
        return reply
