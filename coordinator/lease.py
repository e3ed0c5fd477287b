"""Who leads: pure decisions over the lease as last seen and the time.

Rules, in order:

Leading
1. Someone else's instance wrote the lease: step down now.
2. No renewal succeeded for `step_down_after`: step down. A standby takes
   over only after `lease_seconds` without seeing a renewal, and it starts
   counting only when it sees one, which is after the renewal request began;
   so with `step_down_after < lease_seconds` the old leader has stopped before
   a new one starts.
3. Last renewal `renew_every` ago or more: renew (compare-and-set on the revision).

Not leading
4. No lease, or one deleted: claim it.
5. The lease is this instance's own (it stepped down, nobody took over): claim
   it back; a standby racing for it loses the compare-and-set.
6. The lease's revision unchanged for the lease's own `lease_seconds`, by this
   process's clock: take it over.
7. Otherwise wait.

Time is a monotonic clock of this process; wall times in the lease are shown
to people but never compared across machines.
"""

from dataclasses import dataclass

from ferry.proto.leader import Lease


@dataclass(frozen=True)
class Timing:
    renew_every: float = 1.0
    lease_seconds: float = 4.0
    step_down_after: float = 2.5


@dataclass(frozen=True)
class Seen:
    """The lease as last read: `revision` 0 when there is none; `since` is when
    this process first saw that revision."""

    lease: Lease | None
    revision: int
    since: float


NOTHING_SEEN = Seen(None, 0, 0.0)


@dataclass(frozen=True)
class Wait:
    pass


@dataclass(frozen=True)
class Renew:
    revision: int


@dataclass(frozen=True)
class Claim:
    """Write a new term: create the key (`revision` 0) or replace that revision."""

    revision: int
    reason: str


@dataclass(frozen=True)
class StepDown:
    reason: str


Decision = Wait | Renew | Claim | StepDown


def decide(instance: str, leading: bool, seen: Seen, renewed: float | None, now: float, timing: Timing) -> Decision:
    """`renewed`: when the last successful write of the lease by this process
    began (monotonic), None if it never wrote one."""
    lease = seen.lease
    if leading:
        if lease is not None and lease.instance != instance:
            return StepDown(f"{lease.holder} took the lease (term {lease.term})")
        if renewed is None or now - renewed >= timing.step_down_after:
            silent = "never" if renewed is None else f"for {now - renewed:.1f} s"
            return StepDown(f"could not renew the lease {silent}")
        if now - renewed >= timing.renew_every:
            return Renew(seen.revision)
        return Wait()
    if lease is None:
        return Claim(seen.revision, "no coordinator held the lease")
    if lease.instance == instance:
        return Claim(seen.revision, "the lease was still this coordinator's")
    lapsed = now - seen.since
    if lapsed >= lease.lease_seconds:
        return Claim(seen.revision, f"{lease.holder}'s lease (term {lease.term}) lapsed: not renewed for {lapsed:.1f} s")
    return Wait()


def next_lease(previous: Lease | None, holder: str, instance: str, wall: float, timing: Timing) -> Lease:
    """The lease written by a claim: the next term, held from now."""
    return Lease(
        holder=holder,
        instance=instance,
        term=(previous.term if previous is not None else 0) + 1,
        since=wall,
        renewed_at=wall,
        lease_seconds=timing.lease_seconds,
    )


def observe(seen: Seen, lease: Lease | None, revision: int, now: float) -> Seen:
    """The lease read now: a revision not seen before starts its clock; the same one keeps it."""
    if revision == seen.revision and revision != 0:
        return seen
    return Seen(lease, revision, now)
