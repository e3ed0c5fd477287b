"""The session reconciler's decisions. Pure.

From the stored session record and what the two agents report now (their
`jobs` answer: the session as each knows it from libvirt and its journal, and
where the VM is on each host), `step` returns the one thing to do next. The
driver (coordinator/sessions/driver.py) acts, then asks again. Nothing here
trusts the coordinator's memory: a coordinator that has just started, or taken
over, decides exactly as the one that started the session would have.

Where the VM runs decides, never what the coordinator hoped: a destination
runs an incoming pre-copy guest only after the switch-over, so "running on the
destination with no incoming job" means the move is done, whoever watched it.

Every state has a deadline (`deadline`). Past it, a session that can still be
settled safely is (rolled back with the VM on its source, or aborted at the
source); one that nobody can tell about ends `failed` / `not_confirmed` and
keeps its VM's claim until a later reconcile (`settle_unconfirmed`) finds it.
"""

from dataclasses import dataclass

from ferry.proto.agent import JobReport, Offer, SessionResult
from ferry.proto.api import HostView
from ferry.proto.convergence import POLICIES
from ferry.proto.host import VmState
from ferry.proto.session import Session, SessionCode, SessionState

S = SessionState
MIB = 1024 * 1024

# How long a session may wait for admission. Drains queue many sessions behind
# their limits, so this is generous; the drain retries what times out.
QUEUED_SECONDS = 6 * 3600.0
# Preparing includes creating images for storage copy, on each candidate tried.
PREPARING_SECONDS = 180.0
# Beyond the policy's own completion timeout (which the source agent enforces
# itself): time for the abort, or for a silent agent to come back.
MIGRATING_GRACE_SECONDS = 120.0
# After the source reported success, how long the destination may take to show
# the VM running (a restarting destination agent) before nobody can tell.
COMMIT_SECONDS = 60.0
# How often a running migration is looked at without news.
FOLLOW_SECONDS = 5.0
# How soon to look again when an agent did not answer.
RETRY_SECONDS = 1.0

_ACTIVE = (VmState.RUNNING, VmState.PAUSED)


@dataclass(frozen=True)
class HostSide:
    """What one host said about the session when asked."""

    answered: bool
    # The session as this host knows it (None: it never heard of it).
    job: JobReport | None = None
    # The session's VM on this host (None: no domain of that name).
    vm_state: VmState | None = None

    @property
    def vm_active(self) -> bool:
        return self.vm_state in _ACTIVE

    @property
    def vm_gone(self) -> bool:
        """The host answered and the VM is not active there (undefined, or shut off)."""
        return self.answered and not self.vm_active

    @property
    def result(self) -> SessionResult | None:
        return self.job.result if self.job is not None else None

    @property
    def offer(self) -> Offer | None:
        return self.job.offer if self.job is not None else None

    @property
    def job_running(self) -> bool:
        return self.job is not None and self.job.job_running


SILENT = HostSide(answered=False)


@dataclass(frozen=True)
class Observed:
    source: HostSide
    dest: HostSide
    now: float
    # A result the source published (on the session subject) and the driver caught.
    result: SessionResult | None = None

    @property
    def source_result(self) -> SessionResult | None:
        return self.result or self.source.result


# ----- what to do next ---------------------------------------------------------


@dataclass(frozen=True)
class Prepare:
    """Ask the session's destination (then the alternatives) to prepare."""


@dataclass(frozen=True)
class StartMigration:
    """Record `migrating`, then ask the source to migrate to the destination's offer.
    The source takes a session's migrate request once (it journals it first), so
    asking again after a crash never starts a second job."""

    offer: Offer


@dataclass(frozen=True)
class MarkMigrating:
    """The source already runs (or ran) the job: the record catches up."""


@dataclass(frozen=True)
class Follow:
    """Wait for the source's result, up to `seconds`; with `abort`, ask the source to abort first."""

    seconds: float = FOLLOW_SECONDS
    abort: str = ""


@dataclass(frozen=True)
class Commit:
    """The VM left the source: confirm it runs on the destination, clean up the source."""

    result: SessionResult | None = None


@dataclass(frozen=True)
class RollBack:
    """The VM stays on its source: remove what the destination prepared, then end the session."""

    state: SessionState
    code: str
    reason: str
    result: SessionResult | None = None


@dataclass(frozen=True)
class NotConfirmed:
    """Nobody can tell where the VM runs: end `failed` / `not_confirmed`, touch nothing,
    keep the VM's claim; a later reconcile settles it."""

    reason: str


@dataclass(frozen=True)
class Retry:
    """Not enough is known yet (an agent did not answer): look again after `seconds`."""

    reason: str
    seconds: float = RETRY_SECONDS


@dataclass(frozen=True)
class Expire:
    """A queued session waited past its deadline."""

    reason: str


@dataclass(frozen=True)
class Nothing:
    """Not the driver's business (queued: admission's), or already ended."""


Step = Prepare | StartMigration | MarkMigrating | Follow | Commit | RollBack | NotConfirmed | Retry | Expire | Nothing


# ----- deadlines ---------------------------------------------------------------


def entered_at(session: Session) -> float:
    """When the session entered its current state."""
    return session.history[-1].at if session.history else session.created_at


def migration_timeout(session: Session) -> float:
    """The completion timeout the source agent's policy enforces, as well as the
    coordinator can know it (the guest's memory, or the data total seen so far)."""
    policy = POLICIES.get(session.options.policy) or POLICIES["default"]
    data_bytes = session.demand.memory_mib * MIB
    if session.progress is not None:
        data_bytes = max(data_bytes, session.progress.data_total)
    return policy.completion_timeout(data_bytes, session.options.seconds_per_gib)


def deadline(session: Session) -> float:
    """When the session must have left its current state (inf once ended)."""
    start = entered_at(session)
    if session.state == S.QUEUED:
        return start + QUEUED_SECONDS
    if session.state == S.PREPARING:
        return start + PREPARING_SECONDS
    if session.state in (S.MIGRATING, S.POSTCOPY):
        return start + migration_timeout(session) + MIGRATING_GRACE_SECONDS
    return float("inf")


# ----- the decision ------------------------------------------------------------


def expired(session: Session, now: float) -> Expire | None:
    """A queued session that waited past its deadline (admission's business, not a driver's)."""
    if session.state == S.QUEUED and now >= deadline(session):
        return Expire(f"{session.vm} waited {QUEUED_SECONDS / 3600:g} h for admission without being admitted")
    return None


def step(session: Session, seen: Observed) -> Step:
    if session.state.terminal:
        return Nothing()
    late = seen.now >= deadline(session)
    if session.state == S.QUEUED:
        return expired(session, seen.now) or Nothing()
    if session.state == S.PREPARING:
        return _preparing(session, seen, late)
    return _moving(session, seen, late)


def _preparing(session: Session, seen: Observed, late: bool) -> Step:
    if seen.source_result is not None or seen.source.job is not None:
        # The migrate request reached the source before the record said so.
        return MarkMigrating()
    if late:
        return RollBack(
            S.FAILED, SessionCode.TIMED_OUT,
            f"{session.dest} did not get ready to receive {session.vm} within {PREPARING_SECONDS:g} s; "
            f"{session.vm} stays on {session.source}",
        )
    if seen.dest.offer is not None and seen.source.answered:
        return StartMigration(seen.dest.offer)
    # No reservation on the destination (never made, lapsed, or lost): prepare
    # (again). An unanswered destination is the prepare step's decline.
    return Prepare()


def _moving(session: Session, seen: Observed, late: bool) -> Step:
    src, dst = seen.source, seen.dest
    result = seen.source_result
    postcopy = session.state == S.POSTCOPY
    if result is not None:
        if result.ok:
            return _commit_or_wait(session, seen, result)
        if dst.answered and dst.vm_state == VmState.RUNNING and not dst.job_running and src.vm_gone:
            # The source saw an error after the switch-over: the guest runs on
            # the destination and nowhere else, so that is where it lives now.
            return Commit(result)
        if postcopy:
            # A failed post-copy leaves the guest's memory split between the
            # hosts: neither side is removed; an operator must look.
            return NotConfirmed(
                f"post-copy of {session.vm} failed ({result.reason}); its memory is split between "
                f"{session.source} and {session.dest}; nothing was removed"
            )
        state = S.CANCELLED if result.aborted else S.FAILED
        return RollBack(state, result.code or SessionCode.MIGRATION_FAILED, result.reason, result)
    if src.answered and src.job is not None and (src.job_running or not src.job.started):
        if late:
            return Follow(abort=f"{session.vm} was still migrating at its deadline")
        if session.cancel_requested and not postcopy:
            return Follow(abort="cancelled on request")
        return Follow()
    if src.answered and src.job is not None and not late:
        # Journaled and started, no job and no result yet: the agent is deciding.
        # (Past the deadline, where the VM runs decides, as below.)
        return Retry(f"{session.source} is settling the migration of {session.vm}")
    if _arrived(session, seen):
        # The job finished while nobody watched (or its report was lost).
        return Commit()
    if src.answered and src.job is None:
        # The source never took this session's migrate request.
        if src.vm_active and dst.answered and dst.offer is not None and not dst.job_running and not postcopy:
            return StartMigration(dst.offer)
        if src.vm_active and dst.answered and not dst.job_running:
            return RollBack(
                S.FAILED, SessionCode.MIGRATION_FAILED,
                f"the migration never started; {session.vm} still runs on {session.source}",
            )
    if not late:
        who = [h for h, side in ((session.source, src), (session.dest, dst)) if not side.answered]
        why = f"{' and '.join(str(h) for h in who)} did not answer" if who else "the hosts do not agree yet"
        return Retry(f"{why}; {session.vm} is looked for again")
    if dst.answered and dst.vm_state is None and not postcopy:
        # No incoming domain: no migration can be under way or have finished,
        # so the guest is where it was (a silent source is its own problem).
        code = SessionCode.MIGRATION_FAILED if src.answered else SessionCode.SOURCE_UNREACHABLE
        return RollBack(
            S.FAILED, code,
            f"no migration of {session.vm} reached {session.dest} by the deadline; it stays on {session.source}",
        )
    return NotConfirmed(_unknown(session, seen))


def _commit_or_wait(session: Session, seen: Observed, result: SessionResult) -> Step:
    src, dst = seen.source, seen.dest
    if dst.vm_state == VmState.RUNNING:
        return Commit(result)
    if src.answered and src.vm_active and dst.answered and dst.vm_state is None:
        return RollBack(
            S.FAILED, SessionCode.NOT_CONFIRMED,
            f"{session.source} reported the migration done but {session.vm} still runs there and not on "
            f"{session.dest}",
            result,
        )
    if seen.now >= result.at + COMMIT_SECONDS:
        return NotConfirmed(_unknown(session, seen))
    # The destination's commit is what confirms (it is asked several times: its
    # agent may be restarting, or may show the guest only once it is committed).
    return Commit(result)


def _arrived(session: Session, seen: Observed) -> bool:
    """The guest runs on the destination, no incoming job is left there, and the
    source (if it answered) no longer runs it."""
    dst = seen.dest
    if not (dst.answered and dst.vm_state == VmState.RUNNING and not dst.job_running):
        return False
    if seen.source.answered:
        return not seen.source.vm_active
    # Post-copy runs the guest on the destination while pages still come from the source.
    return session.state != S.POSTCOPY


def _unknown(session: Session, seen: Observed) -> str:
    def says(host: str | None, side: HostSide) -> str:
        if not side.answered:
            return f"{host} does not answer"
        return f"{host} has it {side.vm_state or 'not at all'}"

    return (
        f"where {session.vm} runs cannot be told: {says(session.source, seen.source)}, "
        f"{says(session.dest, seen.dest)}; nothing was cleaned up"
    )


def peer_mismatch(offer: Offer, hosts: list[HostView]) -> str | None:
    """Why the source must not be sent to the offer's peer URI, or None.

    An offer is a reply to `prepare`, which anyone able to answer on the
    destination's subject could send; its heartbeat comes from the subject only
    that host's identity may publish on. So a source dials only the peer URI the
    destination announces itself, never one an offer brings along."""
    view = next((h for h in hosts if h.host == offer.host), None)
    if view is None:
        return f"{offer.host} does not report; the peer URI its offer names ({offer.peer_uri}) cannot be vouched for"
    if offer.peer_uri != view.peer_uri:
        announced = f"announces {view.peer_uri}" if view.peer_uri else "announces none"
        return (
            f"{offer.host} offered {offer.peer_uri} as its peer URI, but its heartbeat {announced}; "
            "no source is sent to a peer its host did not announce"
        )
    return None


def settle_unconfirmed(session: Session, seen: Observed) -> Step:
    """A `not_confirmed` session, looked at again: settled once a host can tell."""
    if not (session.state == S.FAILED and session.code == SessionCode.NOT_CONFIRMED):
        return Nothing()
    src, dst = seen.source, seen.dest
    if _arrived(session, seen):
        return Commit(seen.source_result)
    if src.answered and src.vm_active and not src.job_running and dst.answered and not dst.vm_active:
        return RollBack(
            S.FAILED, SessionCode.MIGRATION_FAILED,
            f"settled later: {session.vm} runs on {session.source}; the migration did not happen",
        )
    return Nothing()
