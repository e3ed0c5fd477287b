"""Whether plain pre-copy converges: a prediction from the dirty rate measured before the move.

Pure: numbers in, a Prediction out; no clock, I/O or configuration.

The model is plain pre-copy. Iteration 1 sends all memory; each next iteration
sends what the guest dirtied during the previous one (dirty rate × its
duration, never more than the guest's memory). The migration converges as
soon as what is left can be sent within the max downtime; that final copy,
with the guest paused, is the downtime. The model ignores compression, zero
pages and a guest that rewrites the same pages (its real dirty set grows
slower than rate × time), so it errs on the side of "does not converge".
"""

import math
from dataclasses import dataclass

from ferry.proto.convergence import Policy, Prediction

MIB = 1024 * 1024
GIB = 1024 * MIB
# What "no bandwidth limit" copies at when the caller knows no better.
DEFAULT_LINK_BPS = GIB
# Pre-copy that has not converged after this many iterations is taken as not converging.
MAX_ITERATIONS = 30

RAISE_DOWNTIME = "raise max downtime"
AUTO_CONVERGE = "auto-converge"
POSTCOPY = "post-copy"
PAUSE = "pause"
ABORT_ON_TIMEOUT = "abort on timeout"


@dataclass(frozen=True)
class _Run:
    """One converging run of the model."""

    total_ms: int
    downtime_ms: int
    iterations: int


def predict(
    *,
    memory_bytes: int,
    dirty_rate_bps: int,
    bandwidth_bps: int,
    max_downtime_ms: int,
    policy: Policy,
    allow_postcopy: bool,
    measured_at: float = 0.0,
    measure_seconds: float = 0.0,
    link_bps: int = DEFAULT_LINK_BPS,
) -> Prediction:
    """What plain pre-copy does with this guest at this speed, and what the policy will have to add.

    `bandwidth_bps` 0 means no limit: the model copies at `link_bps` instead and
    the reason says so; the Prediction's `bandwidth_bps` is the speed the
    numbers assume. Expected times and iterations are those of plain pre-copy
    at `max_downtime_ms`; `iterations` counts the passes while the guest runs,
    not the final copy. `steps_needed`:
    - [] when it converges at the downtime the policy starts with;
    - ["raise max downtime"] when it converges only at a higher one, up to
      `max_downtime_ms`;
    - when it does not converge: "raise max downtime" (if the policy ramps it),
      then the further levers the policy has, in the order it uses them
      ("auto-converge", "post-copy" when the session allows it, "pause"), or
      "abort on timeout" when it has none.
    """
    for label, value in (
        ("memory_bytes", memory_bytes),
        ("dirty_rate_bps", dirty_rate_bps),
        ("bandwidth_bps", bandwidth_bps),
        ("max_downtime_ms", max_downtime_ms),
    ):
        if value < 0:
            raise ValueError(f"{label} must not be negative, got {value}")
    if link_bps <= 0:
        raise ValueError(f"link_bps must be positive, got {link_bps}")

    speed = bandwidth_bps or link_bps
    copies = _rate(speed) + ("" if bandwidth_bps else " (no limit set: assumed link speed)")
    numbers = f"dirties {_rate(dirty_rate_bps)}, copies {copies}"

    def prediction(converges: bool, steps: list[str], reason: str, run: _Run | None = None) -> Prediction:
        return Prediction(
            dirty_rate_bps=dirty_rate_bps,
            bandwidth_bps=speed,
            memory_bytes=memory_bytes,
            converges=converges,
            expected_total_ms=run.total_ms if run else 0,
            expected_downtime_ms=run.downtime_ms if run else 0,
            iterations=run.iterations if run else 0,
            steps_needed=steps,
            reason=reason,
            measured_at=measured_at,
            measure_seconds=measure_seconds,
        )

    if memory_bytes == 0:
        return prediction(True, [], "no memory to copy", _Run(0, 0, 0))

    at_max = _precopy(memory_bytes, dirty_rate_bps, speed, max_downtime_ms)
    start_ms = _start_downtime_ms(policy, max_downtime_ms)
    if at_max is not None:
        timing = (
            f"about {at_max.total_ms / 1000:.1f} s in {at_max.iterations} "
            f"iteration{'s' if at_max.iterations != 1 else ''}, {at_max.downtime_ms} ms downtime"
        )
        if start_ms == max_downtime_ms or _precopy(memory_bytes, dirty_rate_bps, speed, start_ms) is not None:
            return prediction(True, [], f"{numbers}: pre-copy converges, {timing}", at_max)
        return prediction(
            True,
            [RAISE_DOWNTIME],
            f"{numbers}: pre-copy converges only once max downtime rises from {start_ms} ms "
            f"towards {max_downtime_ms} ms, {timing}; the {policy.name} policy will raise it",
            at_max,
        )

    if dirty_rate_bps >= speed:
        verdict = "pre-copy cannot converge"
    else:
        verdict = f"pre-copy does not get under {max_downtime_ms} ms downtime within {MAX_ITERATIONS} iterations"
    levers = _levers(policy, allow_postcopy)
    steps = ([RAISE_DOWNTIME] if start_ms < max_downtime_ms else []) + (levers or [ABORT_ON_TIMEOUT])
    if levers:
        tail = f"the {policy.name} policy will need {', then '.join(levers)}"
    else:
        tail = f"the {policy.name} policy has no lever for that and will abort on timeout"
    return prediction(False, steps, f"{numbers}: {verdict}; {tail}")


def _precopy(memory: int, dirty_bps: int, speed_bps: int, downtime_ms: int) -> _Run | None:
    """Plain pre-copy at a fixed max downtime; None when it does not converge."""
    allowed = speed_bps * downtime_ms / 1000  # bytes the final, paused copy may send
    to_send = float(memory)
    elapsed = 0.0
    for iteration in range(1, MAX_ITERATIONS + 1):
        duration = to_send / speed_bps
        elapsed += duration
        left = min(float(memory), dirty_bps * duration)
        if left <= allowed:
            downtime = left / speed_bps
            return _Run(
                total_ms=_ms(elapsed + downtime),
                downtime_ms=_ms(downtime),
                iterations=iteration,
            )
        to_send = left
    return None


def _start_downtime_ms(policy: Policy, max_downtime_ms: int) -> int:
    """The max downtime the policy sets first: the session's max when it does not ramp."""
    if policy.downtime_steps == 0:
        return max_downtime_ms
    return min(policy.downtime_start_ms, max_downtime_ms)


def _levers(policy: Policy, allow_postcopy: bool) -> list[str]:
    """The policy's levers beyond max downtime, in the order it pulls them."""
    levers = []
    if policy.auto_converge:
        levers.append(AUTO_CONVERGE)
    if allow_postcopy and policy.postcopy_after_iterations:
        levers.append(POSTCOPY)
    if policy.pause_after_seconds:
        levers.append(PAUSE)
    return levers


def _ms(seconds: float) -> int:
    """Whole milliseconds, rounded up (a tiny downtime is 1 ms, not 0), immune to float noise."""
    return math.ceil(round(seconds * 1000, 6))


def _rate(bps: int) -> str:
    if bps >= GIB:
        return f"{bps / GIB:.1f} GiB/s"
    return f"{bps / MIB:.1f} MiB/s"
