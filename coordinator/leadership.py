"""The leader lease in KV, acted out: read it, renew it, take it over, step
down (coordinator/lease.py decides), and keep this coordinator's member record.

`leading` is checked against the clock, not only a flag: a leader paused past
`step_down_after` (a stopped process, a stalled machine) is not leading the
moment it wakes, before its loop has run again.
"""

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
import structlog

from ferry.coordinator import lease as rules
from ferry.coordinator.kv import Bucket, TypedBucket, open_bucket
from ferry.proto.errors import FerryError
from ferry.proto.leader import Lease, Member, Role

BUCKET = "ferry_leader"
LEASE_KEY = "lease"
# The loop's tick: how late a step-down can be noticed, at worst.
TICK_SECONDS = 0.25
# A standby reads the lease this often.
READ_EVERY = 0.5
MEMBER_EVERY = 5.0
# Longest wait for a read of the lease before trying again.
READ_TIMEOUT = 2.0

# The new lease, why it was taken, and who held it before ("" if nobody else).
Gain = Callable[[Lease, str, str], Awaitable[None]]
Loss = Callable[[str], Awaitable[None]]


def member_key(name: str) -> str:
    return f"member.{name}"


class Leadership:
    def __init__(
        self,
        bucket: Bucket,
        name: str,
        timing: rules.Timing,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.instance = secrets.token_hex(6)
        self._leases = TypedBucket(bucket, Lease, "leader lease")
        self._members = TypedBucket(bucket, Member, "coordinator")
        self._timing = timing
        self._monotonic = monotonic
        self._wall = wall
        self._seen = rules.NOTHING_SEEN
        self._renewed: float | None = None
        self._leading = False
        self._log = structlog.get_logger().bind(component="leadership", coordinator=name)

    @classmethod
    async def open(cls, js, name: str, timing: rules.Timing, *, replicas: int = 1, **clocks) -> "Leadership":
        bucket = await open_bucket(js, BUCKET, "Ferry: the coordinators' leader lease and members", history=1, replicas=replicas)
        return cls(bucket, name, timing, **clocks)

    # ----- reading -----

    @property
    def leading(self) -> bool:
        return (
            self._leading
            and self._renewed is not None
            and self._monotonic() - self._renewed < self._timing.step_down_after
        )

    @property
    def lease(self) -> Lease | None:
        """The lease as last seen (this coordinator's own while it leads)."""
        return self._seen.lease

    def lapsed_for(self) -> float:
        """Seconds since the lease last changed, by this process's clock."""
        return self._monotonic() - self._seen.since if self._seen.revision else 0.0

    async def members(self) -> list[Member]:
        found = []
        for key in await self._members.keys():
            if key.startswith("member."):
                entry = await self._members.find(key)
                if entry is not None:
                    found.append(entry[0])
        return found

    # ----- the loop -----

    async def run(self, on_gain: Gain, on_loss: Loss, started_at: float, version: str, server: Callable[[], str]) -> None:
        last_read = last_member = float("-inf")
        while True:
            now = self._monotonic()
            if not self._leading and now - last_read >= READ_EVERY:
                await self._read()
                last_read = now
            decision = rules.decide(self.instance, self._leading, self._seen, self._renewed, now, self._timing)
            match decision:
                case rules.Renew(revision):
                    await self._renew(revision)
                case rules.Claim(revision, reason):
                    before = self._seen.lease
                    previous = before.holder if before is not None and before.instance != self.instance else ""
                    if await self._claim(revision):
                        assert self._seen.lease is not None
                        self._log.info("leadership_taken", term=self._seen.lease.term, reason=reason, previous=previous)
                        await on_gain(self._seen.lease, reason, previous)
                        last_member = float("-inf")  # say the new role at once
                case rules.StepDown(reason):
                    self._leading = False
                    self._log.warning("leadership_lost", reason=reason)
                    await on_loss(reason)
                    await self._read()
                    last_member = float("-inf")
                case rules.Wait():
                    pass
            if now - last_member >= MEMBER_EVERY:
                last_member = now
                await self._announce(started_at, version, server())
            await asyncio.sleep(TICK_SECONDS)

    async def _read(self) -> None:
        try:
            found = await asyncio.wait_for(self._leases.find(LEASE_KEY), READ_TIMEOUT)
        except (TimeoutError, nats.errors.Error, FerryError) as exc:
            self._log.debug("lease_unread", error=str(exc) or type(exc).__name__)
            return
        # No lease (or a deleted one) is revision 0: a claim creates it anew.
        lease, revision = found if found is not None else (None, 0)
        self._seen = rules.observe(self._seen, lease, revision, self._monotonic())

    async def _renew(self, revision: int) -> None:
        started = self._monotonic()
        assert self._seen.lease is not None
        renewed = msgspec.structs.replace(self._seen.lease, renewed_at=self._wall())
        # Never wait past the moment this leader must have stepped down.
        budget = max(0.05, self._timing.step_down_after - (started - (self._renewed or started)))
        try:
            written = await asyncio.wait_for(self._leases.put_if(LEASE_KEY, renewed, revision), budget)
        except FerryError:
            # Someone else wrote the lease: read who, and step down on the next decision.
            await self._read()
            return
        except (TimeoutError, nats.errors.Error) as exc:
            self._log.warning("lease_not_renewed", error=str(exc) or type(exc).__name__)
            return
        self._renewed = started
        self._seen = rules.Seen(renewed, written, self._monotonic())

    async def _claim(self, revision: int) -> bool:
        started = self._monotonic()
        lease = rules.next_lease(self._seen.lease, self.name, self.instance, self._wall(), self._timing)
        try:
            if revision == 0:
                written = await asyncio.wait_for(self._leases.create(LEASE_KEY, lease), READ_TIMEOUT)
            else:
                written = await asyncio.wait_for(self._leases.put_if(LEASE_KEY, lease, revision), READ_TIMEOUT)
        except FerryError:
            await self._read()  # another coordinator won
            return False
        except (TimeoutError, nats.errors.Error) as exc:
            self._log.warning("lease_not_claimed", error=str(exc) or type(exc).__name__)
            return False
        self._renewed = started
        self._leading = True
        self._seen = rules.Seen(lease, written, self._monotonic())
        return True

    async def _announce(self, started_at: float, version: str, server: str) -> None:
        member = Member(
            name=self.name,
            instance=self.instance,
            role=Role.LEADER if self.leading else Role.STANDBY,
            version=version,
            started_at=started_at,
            seen_at=self._wall(),
            server=server,
        )
        try:
            await asyncio.wait_for(self._members.put(member_key(self.name), member), READ_TIMEOUT)
        except (TimeoutError, nats.errors.Error) as exc:
            self._log.debug("member_not_written", error=str(exc) or type(exc).__name__)

    async def release(self) -> None:
        """On a clean stop: give the lease up (a standby takes it at its next read,
        not a lease later) and remove this coordinator's member record."""
        was_leading, self._leading = self.leading, False
        try:
            if was_leading and self._seen.revision:
                await asyncio.wait_for(self._leases.delete_if(LEASE_KEY, self._seen.revision), READ_TIMEOUT)
            await asyncio.wait_for(self._members.delete(member_key(self.name)), READ_TIMEOUT)
        except (TimeoutError, nats.errors.Error, FerryError) as exc:
            self._log.info("lease_not_released", error=str(exc) or type(exc).__name__)
