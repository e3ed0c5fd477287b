"""Convergence: the named policies that steer a running migration, the actions
they take, and the prediction made before it starts."""

import enum
from typing import Annotated

import msgspec

from ferry.proto.progress import Progress

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]


class Policy(msgspec.Struct, frozen=True):
    """How a migration is steered when the guest dirties memory faster than it is copied.

    Max downtime starts at `downtime_start_ms` and rises in `downtime_steps`
    equal steps, one per pre-copy iteration, up to the session's
    `max_downtime_ms`. The other levers are used only when the policy allows
    them and their trigger is reached.
    """

    name: str
    description: str
    downtime_start_ms: Annotated[int, msgspec.Meta(ge=1)] = 50
    downtime_steps: Annotated[int, msgspec.Meta(ge=0)] = 5
    # QEMU throttles the guest's vCPUs while pre-copy is not converging; armed at
    # the start (QEMU cannot turn it on later) and engaged by QEMU only when needed.
    auto_converge: bool = True
    # QEMU raises the throttle by the increment after every second pass that
    # dirtied more than half of what it copied: steps of 20 reach 90 % in four.
    auto_converge_initial: Annotated[int, msgspec.Meta(ge=1, le=99)] = 30
    auto_converge_increment: Annotated[int, msgspec.Meta(ge=1, le=99)] = 20
    # Switch to post-copy after this many iterations without converging (and only
    # when the session allows post-copy). 0: never.
    postcopy_after_iterations: Annotated[int, msgspec.Meta(ge=0)] = 0
    # As a last resort, pause the guest and copy what is left (a long downtime
    # instead of a failed migration), after this many seconds. 0: never.
    pause_after_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Abort when the migration takes longer than this per GiB of data to move,
    # and never sooner than `min_timeout_seconds`.
    seconds_per_gib: PositiveSeconds = 120.0
    # Small guests on slow links still need their first pass and a few more.
    min_timeout_seconds: PositiveSeconds = 120.0

    def completion_timeout(self, data_bytes: int, seconds_per_gib: float | None = None) -> float:
        """Seconds a migration of `data_bytes` may take before it is aborted
        (`seconds_per_gib` overrides the policy's, as a session may)."""
        per_gib = seconds_per_gib if seconds_per_gib is not None else self.seconds_per_gib
        return max(self.min_timeout_seconds, per_gib * data_bytes / (1 << 30))
    # Abort when no pass has been smaller than all before it (and QEMU has not
    # tightened its throttle) for this long.
    stall_seconds: PositiveSeconds = 30.0


class ActionKind(enum.StrEnum):
    SET_DOWNTIME = "set_downtime"
    AUTO_CONVERGE_ENGAGED = "auto_converge_engaged"  # QEMU began throttling (observed, armed at start)
    POSTCOPY = "postcopy"
    PAUSE = "pause"
    ABORT = "abort"


class PolicyAction(msgspec.Struct, frozen=True):
    """One step the policy took, with the sample that caused it."""

    kind: ActionKind
    reason: str
    at: float = 0.0
    # For set_downtime: the new max downtime in ms; for auto_converge_engaged: the throttle %.
    value: int = 0
    sample: Progress | None = None


class Prediction(msgspec.Struct, frozen=True):
    """What plain pre-copy would do, from the dirty rate measured before the move."""

    dirty_rate_bps: int
    bandwidth_bps: int
    memory_bytes: int
    converges: bool
    # Plain pre-copy at the session's max downtime; 0 when it does not converge.
    expected_total_ms: int = 0
    expected_downtime_ms: int = 0
    iterations: int = 0
    # Which levers of the policy the prediction expects to need, in order.
    steps_needed: list[str] = []
    reason: str = ""
    # When the dirty rate was measured, and for how long.
    measured_at: float = 0.0
    measure_seconds: float = 0.0


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy(
            name="default",
            description="raise max downtime step by step, let QEMU throttle a guest that does not converge, "
            "post-copy after 5 iterations if the session allows it; abort after 120 s per GiB (at least 120 s) "
            "or 30 s without progress",
            postcopy_after_iterations=5,
        ),
        Policy(
            name="gentle",
            description="never slow the guest down: raise max downtime only, no throttling, no post-copy, no pause; "
            "abort after 60 s per GiB or 20 s without progress",
            auto_converge=False,
            seconds_per_gib=60.0,
            min_timeout_seconds=30.0,
            stall_seconds=20.0,
        ),
        Policy(
            name="insist",
            description="finish whatever it costs the guest: throttle hard from the start, post-copy after 2 "
            "iterations if allowed, and after 120 s pause the guest to copy the rest; abort after 300 s per GiB",
            auto_converge_initial=50,
            auto_converge_increment=25,
            postcopy_after_iterations=2,
            pause_after_seconds=120.0,
            seconds_per_gib=300.0,
            min_timeout_seconds=120.0,
            stall_seconds=60.0,
        ),
        Policy(
            name="plain",
            description="what plain `virsh migrate --live` does: max downtime from the start, no other lever; "
            "abort after 120 s per GiB or 30 s without progress",
            downtime_steps=0,
            auto_converge=False,
        ),
    )
}
DEFAULT_POLICY = "default"
