"""Progress that never runs backwards: percent done and an ETA with a range, from a
migration's samples, and the same for a whole drain. Pure.

libvirt's own figures run backwards: `data_remaining` grows again at every
pass over memory the guest dirtied, and `processed / (processed + remaining)`
falls with it. Here the bytes still to send are predicted, not read: what is
left now plus what the guest will dirty while it is sent (a geometric series
over the passes, with the dirty rate over the transfer rate as its ratio), so
the expected total is known from the first sample and refined as passes go.
The percent is sent over that total, never lower than it was, and 100 only
when the migration has completed. The ETA is a middle value with a range:
best case nothing more is dirtied at the best rate seen, worst case the
highest dirty rate at the lowest rate seen; no upper bound while the guest
dirties nearly as fast as the link sends (only a policy lever ends that).
"""

from collections import deque
from dataclasses import dataclass

from ferry.proto.convergence import Prediction
from ferry.proto.progress import Progress

# Samples over which transfer and dirty rates are judged (the source sends one a second).
WINDOW = 10
# Above this share of the transfer rate, pre-copy is taken as not converging.
NOT_CONVERGING = 0.95
# Short of completion the percent stays below 100.
BEFORE_THE_END = 99.0


@dataclass(frozen=True)
class Estimate:
    percent: float
    # Bytes expected to be sent in all (what is sent so far included).
    total_bytes: int
    # Seconds to the end: a middle value and a range; None when unknown.
    eta_seconds: float | None = None
    eta_low: float | None = None
    eta_high: float | None = None


class ProgressEstimator:
    """One per migration; `update` with each sample in order, `completed` at the end."""

    def __init__(self, expected_total_bytes: int = 0) -> None:
        # A prediction made before the move (0: none): the first total until samples say more.
        self._expected = expected_total_bytes
        self._percent = 0.0
        self._rates: deque[int] = deque(maxlen=WINDOW)
        self._dirty: deque[int] = deque(maxlen=WINDOW)
        self.last = Estimate(percent=0.0, total_bytes=expected_total_bytes)

    def update(self, sample: Progress) -> Estimate:
        sent, left = sample.data_processed, sample.data_remaining
        if sample.bandwidth_bps:
            self._rates.append(sample.bandwidth_bps)
        self._dirty.append(sample.dirty_rate_bps)
        rate = sum(self._rates) / len(self._rates) if self._rates else 0.0
        dirty = sum(self._dirty) / len(self._dirty)
        future = _still_to_send(left, dirty, rate)
        total = sent + future if sent + left else float(self._expected)
        if not self._rates and self._expected and sent + left:
            # Before any rate is known the prediction is the better total.
            total = max(total, self._expected)
        if total != float("inf"):
            raw = 100.0 * sent / total if total else 0.0
            self._percent = max(self._percent, min(raw, BEFORE_THE_END))
        known = int(total) if total != float("inf") else 0  # 0: not converging, no total to give
        self.last = Estimate(percent=round(self._percent, 2), total_bytes=known, **self._eta(left, future, rate))
        return self.last

    def _eta(self, left: int, future: float, rate: float) -> dict[str, float | None]:
        if not rate:
            return {}
        fastest, slowest = max(self._rates), min(self._rates)
        worst_ratio = max(self._dirty) / slowest if slowest else 1.0
        high = None if worst_ratio >= NOT_CONVERGING else round(left / (1 - worst_ratio) / slowest, 1)
        middle = None if future == float("inf") else round(future / rate, 1)
        low = round(left / fastest, 1)
        if middle is not None and high is not None:
            high = max(high, middle)
        return {"eta_seconds": middle, "eta_low": low if middle is None else min(low, middle), "eta_high": high}

    def completed(self) -> Estimate:
        self._percent = 100.0
        self.last = Estimate(percent=100.0, total_bytes=self.last.total_bytes, eta_seconds=0.0, eta_low=0.0, eta_high=0.0)
        return self.last


def expected_bytes(prediction: Prediction | None) -> int:
    """What a prediction made before the move expects to be sent in all (0: none, or it does not converge)."""
    if prediction is None or not prediction.converges:
        return 0
    return prediction.bandwidth_bps * prediction.expected_total_ms // 1000


def _still_to_send(left: int, dirty_bps: float, rate_bps: float) -> float:
    """What is left now plus what the guest dirties meanwhile, pass after pass."""
    if not rate_bps:
        return float(left)
    ratio = dirty_bps / rate_bps
    if ratio >= NOT_CONVERGING:
        return float("inf") if left else 0.0
    return left / (1 - ratio)


@dataclass(frozen=True)
class DrainEstimate:
    done: int
    total: int
    # Bytes sent so far by every session of the drain.
    moved_bytes: int
    percent: float
    eta_seconds: float | None = None


@dataclass(frozen=True)
class DrainVm:
    """One VM of a drain as the estimate reads it."""

    final: bool
    memory_bytes: int
    # Its current or last session's figures (0: none yet).
    sent: int = 0
    # That session's own estimate of its total (0: unknown), and its rate now.
    expected: int = 0
    rate_bps: int = 0
    moved: bool = False


class DrainProgress:
    """A whole drain: VMs done, data moved, percent of the data expected (never lower),
    and an ETA at the rate the drain's migrations move data now."""

    def __init__(self) -> None:
        self._percent = 0.0

    def update(self, vms: list[DrainVm]) -> DrainEstimate:
        moved = [v for v in vms if v.moved and v.memory_bytes]
        # Each finished move tells how much more than its memory a move sends (dirtied pages).
        amplification = max(1.0, sum(v.sent for v in moved) / sum(v.memory_bytes for v in moved)) if moved else 1.0
        sent = sum(v.sent for v in vms)
        expected = 0.0
        for v in vms:
            if v.final:
                expected += v.sent
            elif v.expected:
                expected += max(v.expected, v.sent)
            else:
                expected += max(v.memory_bytes * amplification, v.sent)
        done = sum(1 for v in vms if v.final)
        if vms and done == len(vms):
            self._percent = 100.0
        elif expected:
            self._percent = max(self._percent, min(100.0 * sent / expected, BEFORE_THE_END))
        rate = sum(v.rate_bps for v in vms if not v.final)
        eta = round((expected - sent) / rate, 1) if rate and done < len(vms) else None
        return DrainEstimate(done=done, total=len(vms), moved_bytes=sent, percent=round(self._percent, 2), eta_seconds=eta)
