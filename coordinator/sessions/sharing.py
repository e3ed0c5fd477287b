"""The bandwidth share: each host's bandwidth budget split between the
migrations it runs (coordinator/bandwidth.py decides), told to the sources
whose share changed, lowest first so no host runs over its budget meanwhile."""

import asyncio

import msgspec
import structlog

from ferry.coordinator import bandwidth
from ferry.coordinator.sessions.book import RecordBook, Superseded
from ferry.coordinator.sessions.ports import AgentPort, Emit, LimitsNow
from ferry.proto.agent import BandwidthRequest
from ferry.proto.errors import FerryError
from ferry.proto.events import BandwidthShared
from ferry.proto.session import Session, SessionState

S = SessionState
_MOVING = (S.PREPARING, S.MIGRATING, S.POSTCOPY)


class BandwidthShare:
    def __init__(self, book: RecordBook, agents: AgentPort, limits: LimitsNow, emit: Emit) -> None:
        self._book = book
        self._agents = agents
        self._limits = limits
        self._emit = emit
        self._log = structlog.get_logger().bind(component="sessions")
        # MiB/s each migrating session's source was last told.
        self._applied: dict[str, int] = {}
        self._lock = asyncio.Lock()

    def adopt(self, session: Session) -> None:
        """A migration found running (after a start or takeover) keeps the share it was given."""
        if session.state in (S.MIGRATING, S.POSTCOPY):
            self._applied[session.id] = session.bandwidth_applied_mib

    def forget(self, session_id: str) -> bool:
        """The session no longer migrates; True when it had a share (the rest may grow)."""
        return self._applied.pop(session_id, None) is not None

    def applied(self, session_id: str) -> bool:
        return session_id in self._applied

    async def rebalance(self, starting: str | None = None) -> int:
        """Share the budget again and tell the sources whose share changed. With
        `starting`, that session joins and its share is returned for its migrate request."""
        async with self._lock:
            moving = [
                s for s in self._book.in_flight()
                if (s.id in self._applied or s.id == starting) and s.state in _MOVING and s.dest is not None
            ]
            limits = self._limits()
            shares = bandwidth.split(
                limits.host_bandwidth_mib,
                [bandwidth.Flow(s.id, s.source, s.dest, s.options.bandwidth_mib) for s in moving if s.dest],
            )
            # Lower shares first, so a host never runs above its budget while shares move.
            for sid, share in sorted(shares.items(), key=lambda kv: kv[1] - self._applied.get(kv[0], 0)):
                if sid == starting or self._applied.get(sid) == share:
                    continue
                session = self._book.current(sid)
                if session is None:
                    continue
                try:
                    await self._agents.bandwidth(session.source, BandwidthRequest(session_id=sid, bandwidth_mib=share))
                except FerryError as exc:
                    self._log.warning("bandwidth_not_changed", session_id=sid, error=exc.message)
                    continue
                self._applied[sid] = share
                reason = (
                    f"{len(moving)} migrations share a budget of {limits.host_bandwidth_mib} MiB/s per host"
                    if limits.host_bandwidth_mib
                    else "the session's own limit"
                )
                try:
                    await self._book.change(sid, lambda s, share=share: msgspec.structs.replace(s, bandwidth_applied_mib=share))
                except Superseded:
                    pass
                await self._emit([BandwidthShared(session_id=sid, vm=session.vm, bandwidth_mib=share, reason=reason)])
            if starting is None:
                return 0
            self._applied[starting] = shares.get(starting, 0)
            return self._applied[starting]
