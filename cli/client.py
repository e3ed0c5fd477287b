"""A client of the coordinator API, for the CLI, tests and scripts."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client

from ferry.proto import subjects
from ferry.proto.agent import SessionProgress, SessionUpdate
from ferry.proto.api import (
    BandwidthChange,
    CancelRequest,
    CordonReply,
    CordonRequest,
    DowntimeChange,
    ForceCompleteRequest,
    HostsReply,
    HostsRequest,
    MigrateRequest,
    PlanReply,
    SessionReply,
    SessionRequest,
    SessionsReply,
    SessionsRequest,
    UncordonRequest,
)
from ferry.proto.codec import Decoder, ReplyDecoder, encode
from ferry.proto.drain import (
    Drain,
    DrainReply,
    DrainRequest,
    DrainsReply,
    DrainsRequest,
    UndrainRequest,
)
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.events import CoordinatorEvent, SessionChanged
from ferry.proto.ha import (
    ConfirmDeadRequest,
    FenceReply,
    HaDefaultRequest,
    HaPriority,
    HaReply,
    HaRequest,
    HaSetRequest,
    RestartsReply,
    RestartsRequest,
)
from ferry.proto.history import EventsReply, EventsRequest
from ferry.proto.leader import StatusReply, StatusRequest
from ferry.proto.limits import LimitsReply, LimitsRequest
from ferry.proto.session import Progress, Session
from ferry.runtime.config import NatsSettings
from ferry.runtime.connection import connect_error, connect_once
from ferry.runtime.identity import ANONYMOUS, Role, read_identity

T = TypeVar("T")

_HOSTS = ReplyDecoder(HostsReply, "hosts")
_SESSION = ReplyDecoder(SessionReply, "session")
_PLAN = ReplyDecoder(PlanReply, "plan")
_SESSIONS = ReplyDecoder(SessionsReply, "sessions")
_LIMITS = ReplyDecoder(LimitsReply, "limits")
_DRAIN = ReplyDecoder(DrainReply, "drain")
_DRAINS = ReplyDecoder(DrainsReply, "drains")
_STATUS = ReplyDecoder(StatusReply, "status")
_CORDON = ReplyDecoder(CordonReply, "cordon")
_HA = ReplyDecoder(HaReply, "ha")
_RESTARTS = ReplyDecoder(RestartsReply, "restarts")
_FENCE = ReplyDecoder(FenceReply, "fence")
_EVENTS = ReplyDecoder(EventsReply, "events")
_UPDATE = Decoder(SessionUpdate, "session update")  # type: ignore[arg-type]
_EVENT = Decoder(CoordinatorEvent, "coordinator event")  # type: ignore[arg-type]


# While coordinators hand over the lead (a few seconds), a request that changes
# something is answered `no_leader`; it is sent again for this long.
FAILOVER_WAIT_SECONDS = 15.0
RETRY_PAUSE_SECONDS = 0.25


class FerryClient:
    def __init__(
        self,
        nc: Client,
        *,
        timeout: float = 5.0,
        failover_wait: float = FAILOVER_WAIT_SECONDS,
        via: str = "",
        caller: str = ANONYMOUS,
        role: Role | None = None,
    ) -> None:
        """`via`: send every request through the coordinator of that name (else any).
        `caller`: the identity's name, the token requests go under (NATS lets only
        that identity publish there); `role`: its role, when known."""
        self._nc = nc
        self._timeout = timeout
        self._failover_wait = failover_wait
        self._via = via
        self._caller = caller
        self._role = role

    @classmethod
    async def connect(cls, settings: NatsSettings, *, via: str = "") -> "FerryClient":
        identity = None
        if settings.identity:
            try:
                identity = read_identity(settings.identity)
            except ValueError as exc:
                raise FerryError(ErrorCode.UNAUTHORIZED, str(exc)) from None
        try:
            nc = await connect_once(settings, name="ferry-cli")
        except FerryError:
            raise
        except Exception as exc:
            raise connect_error(settings, exc) from None
        return cls(
            nc, timeout=settings.request_timeout, via=via,
            caller=identity.name if identity else ANONYMOUS, role=identity.role if identity else None,
        )

    @property
    def max_payload(self) -> int:
        """The largest message the connected server accepts."""
        return self._nc.max_payload

    async def close(self) -> None:
        if not self._nc.is_closed:
            await self._nc.close()

    async def __aenter__(self) -> "FerryClient":
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def request_raw(self, verb: str, payload: bytes) -> bytes:
        if self._role == Role.VIEWER and verb not in subjects.READ_VERBS:
            # NATS would drop it (a viewer may not publish there); say so at once instead of timing out.
            raise FerryError(ErrorCode.FORBIDDEN, f"{self._caller} is a viewer: it may read, not {verb}")
        subject = (
            subjects.via_api(self._via, verb, caller=self._caller) if self._via else subjects.api(verb, caller=self._caller)
        )
        try:
            msg = await self._nc.request(
                subject, payload, timeout=self._timeout, headers={"Ferry-Request-Id": uuid.uuid4().hex[:12]}
            )
        except nats.errors.NoRespondersError:
            who = f"no coordinator called {self._via} is running" if self._via else "no coordinator is running"
            raise FerryError(ErrorCode.UNAVAILABLE, f"{who} (nobody answers {subject})") from None
        except nats.errors.TimeoutError:
            refused = self._nc.last_error
            if refused is not None and "permissions violation" in str(refused).lower() and subject in str(refused):
                raise FerryError(
                    ErrorCode.FORBIDDEN, f"NATS did not let {self._caller} publish on {subject}: this identity may not {verb}"
                ) from None
            raise FerryError(
                ErrorCode.TIMEOUT, f"the coordinator did not answer {subject} within {self._timeout:g} s"
            ) from None
        return msg.data

    async def call(self, verb: str, request: object, decoder: ReplyDecoder[T]) -> T:
        """One request and its decoded reply; sent again while no coordinator leads
        (nothing was done: the standby that answered could not reach a leader)."""
        deadline = time.monotonic() + self._failover_wait
        payload = encode(request)
        while True:
            try:
                return decoder.decode(await self.request_raw(verb, payload))
            except FerryError as exc:
                if exc.code != ErrorCode.NO_LEADER or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(RETRY_PAUSE_SECONDS)

    async def hosts(self, request: HostsRequest = HostsRequest()) -> HostsReply:
        """Every host the request matches, in as many pages as the coordinator sends."""
        pages = [page async for page in self.host_pages(request)]
        hosts = [h for page in pages for h in page.hosts]
        return msgspec.structs.replace(pages[-1], hosts=hosts, more=False, next_after="", total=len(hosts))

    async def host_pages(self, request: HostsRequest = HostsRequest()) -> AsyncIterator[HostsReply]:
        """The hosts page by page (each reply stays under NATS's max_payload)."""
        while True:
            page = await self.call("hosts", request, _HOSTS)
            yield page
            # A coordinator from before pages sends everything at once (`more` unset).
            if not page.more or not page.next_after or page.next_after <= request.after:
                return
            request = msgspec.structs.replace(request, after=page.next_after)

    async def migrate(self, request: MigrateRequest) -> Session:
        return (await self.call("migrate", request, _SESSION)).session

    async def plan(self, request: MigrateRequest) -> PlanReply:
        """A dry run of `migrate`: the destination and a prediction; nothing moves."""
        return await self.call("plan", request, _PLAN)

    async def session(self, session_id: str) -> Session:
        return (await self.call("session", SessionRequest(id=session_id), _SESSION)).session

    async def sessions(self, request: SessionsRequest = SessionsRequest()) -> list[Session]:
        return (await self.call("sessions", request, _SESSIONS)).sessions

    async def sessions_page(self, request: SessionsRequest) -> SessionsReply:
        """One page, with whether older sessions remain and the cursor (`before`) of the next."""
        return await self.call("sessions", request, _SESSIONS)

    async def events(self, request: EventsRequest) -> EventsReply:
        """Stored events in stream order; `last_seq` and `more` say where the next request starts."""
        return await self.call("events", request, _EVENTS)

    async def cancel(self, session_id: str | None = None, *, vm: str | None = None) -> Session:
        """A session by its id, or `vm`'s one running session; with both, the session
        of that id when there is one, else the VM's (the coordinator decides)."""
        return (await self.call("cancel", CancelRequest(id=session_id, vm=vm), _SESSION)).session

    async def bandwidth(self, session_id: str, bandwidth_mib: int) -> Session:
        change = BandwidthChange(id=session_id, bandwidth_mib=bandwidth_mib)
        return (await self.call("bandwidth", change, _SESSION)).session

    async def force_complete(self, session_id: str) -> Session:
        """Post-copy if the session allows it, else the guest pauses for the last pass."""
        return (await self.call("force_complete", ForceCompleteRequest(id=session_id), _SESSION)).session

    async def downtime(self, session_id: str, max_downtime_ms: int) -> Session:
        change = DowntimeChange(id=session_id, max_downtime_ms=max_downtime_ms)
        return (await self.call("downtime", change, _SESSION)).session

    async def cordon(self, host: str, reason: str = "") -> CordonReply:
        return await self.call("cordon", CordonRequest(host=host, reason=reason), _CORDON)

    async def uncordon(self, host: str) -> CordonReply:
        return await self.call("uncordon", UncordonRequest(host=host), _CORDON)

    async def ha(self, vms: list[str] | None = None) -> HaReply:
        """The HA policies of these VMs (each with the default when it has none), else of every VM that has one."""
        return await self.call("ha", HaRequest(vms=list(vms or [])), _HA)

    async def ha_set(self, vm: str, priority: HaPriority) -> HaReply:
        return await self.call("ha_set", HaSetRequest(vm=vm, priority=priority), _HA)

    async def ha_default(self, priority: HaPriority) -> HaReply:
        return await self.call("ha_default", HaDefaultRequest(priority=priority), _HA)

    async def confirm_dead(self, host: str, reason: str = "") -> FenceReply:
        """Say a lost host is off (checked by hand): its HA VMs may start elsewhere."""
        return await self.call("confirm_dead", ConfirmDeadRequest(host=host, reason=reason), _FENCE)

    async def restarts(self, host: str | None = None, limit: int = 100) -> RestartsReply:
        """Restart sessions of HA VMs of dead hosts, newest first."""
        return await self.call("restarts", RestartsRequest(host=host, limit=limit), _RESTARTS)

    async def limits(self, request: LimitsRequest | None = None) -> LimitsReply:
        """The limits in force; with fields set, change them first."""
        if request is None or request == LimitsRequest():
            return await self.call("limits", LimitsRequest(), _LIMITS)
        return await self.call("set_limits", request, _LIMITS)

    async def drain(self, request: DrainRequest) -> DrainReply:
        return await self.call("drain", request, _DRAIN)

    async def undrain(self, host: str) -> Drain:
        return (await self.call("undrain", UndrainRequest(host=host), _DRAIN)).drain

    async def status(self) -> StatusReply:
        """Who leads, the coordinators taking part, NATS and the KV buckets' copies."""
        return await self.call("status", StatusRequest(), _STATUS)

    async def drains(self, host: str | None = None) -> list[Drain]:
        return (await self.call("drains", DrainsRequest(host=host), _DRAINS)).drains

    @asynccontextmanager
    async def event_doorbell(self) -> AsyncIterator[asyncio.Event]:
        """An asyncio.Event set each time the coordinator or a host announces an event:
        a hint to read the event stream again (`events` with `after`), never the
        events themselves (those come from the stream, in order, none missed)."""
        rung = asyncio.Event()

        async def ring(_msg: Any) -> None:
            rung.set()

        subs = [await self._nc.subscribe(subject, cb=ring) for subject in (subjects.COORDINATOR_EVENTS, subjects.ALL_HOST_EVENTS)]
        try:
            yield rung
        finally:
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except Exception:  # the connection closed first (Ctrl-C)
                    pass

    async def follow(self, session: Session, *, poll: float = 1.0) -> AsyncIterator[Session | Progress]:
        """Live progress samples from the source, and the session each time its state
        changes, until it ends (the last item is the finished session).

        State changes are announced on the coordinator's event subject, so the
        end of a session is seen at once rather than at the next poll.
        """
        queue: asyncio.Queue[Progress | None] = asyncio.Queue()

        async def on_progress(msg: Any) -> None:
            try:
                update = _UPDATE.decode(msg.data)
            except FerryError:
                return
            if isinstance(update, SessionProgress):
                queue.put_nowait(update.progress)

        async def on_event(msg: Any) -> None:
            try:
                event = _EVENT.decode(msg.data)
            except FerryError:
                return
            if isinstance(event, SessionChanged) and event.session_id == session.id:
                queue.put_nowait(None)  # re-read the session now

        subs = [
            await self._nc.subscribe(subjects.host_session(session.source, session.id), cb=on_progress),
            await self._nc.subscribe(subjects.COORDINATOR_EVENTS, cb=on_event),
        ]
        try:
            last_state = None
            while True:
                current = await self.session(session.id)
                if current.state != last_state:
                    last_state = current.state
                    yield current
                if current.state.terminal:
                    return
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=poll)
                    while item is not None:
                        yield item
                        item = queue.get_nowait() if not queue.empty() else None
                except TimeoutError:
                    pass
        finally:
            for sub in subs:
                await sub.unsubscribe()
