"""Steering a running migration: job-stats samples in, policy actions out. Pure.

The caller samples the job (agent/progress.py), hands each sample to
`Steering.observe` with its own clock reading and QEMU's current throttle, and
carries out the actions it gets back (set max downtime, switch to post-copy,
pause, abort), recording each in the session history. Nothing here reads a
clock, logs or talks to libvirt.
"""

from ferry.proto.convergence import ActionKind, Policy, PolicyAction
from ferry.proto.progress import Progress

MIB = 1 << 20
GIB = 1 << 30

# A pause copies the rest with the guest stopped: allow half as long again as
# the rest takes at the measured bandwidth.
PAUSE_MARGIN_PERCENT = 150
# QEMU refuses a max downtime above 2000 s (MAX_MIGRATE_DOWNTIME in migration/options.c).
QEMU_MAX_DOWNTIME_MS = 2_000_000
# Report QEMU's throttle again once it has risen this many points since the last report.
THROTTLE_REPORT_POINTS = 20


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB" if n >= 10 * MIB else f"{n / MIB:.1f} MiB"


def _s(seconds: float) -> str:
    return f"{round(seconds, 1):g} s"


class Steering:
    """One migration's convergence policy, fed one sample at a time.

    Rules, in the order they are applied to a sample (samples with
    `data_total == 0`, a job still setting up, are ignored):

    1. downtime ramp: after iteration i, max downtime is
       start + (max - start) * min(i - 1, steps) / steps; SET_DOWNTIME when it rises;
    2. QEMU's throttle observed: AUTO_CONVERGE_ENGAGED when it first shows, and
       again each time it has risen by 20 points since the last report;
    3. post-copy (only if the session allows it and the policy has a trigger):
       from iteration 1 + postcopy_after_iterations, once no progress (see 6)
       was made during the previous iteration or since; afterwards nothing
       more is steered (aborting post-copy would lose the guest);
    4. pause, once, after pause_after_seconds: max downtime raised to what the
       rest needs (1.5 x data left / bandwidth, counting a whole pass after the
       first; at least the session's max, at most QEMU's 2000 s): QEMU then stops the guest and copies the rest;
    5. abort on the completion timeout (seconds per GiB of the largest data
       total seen, at least min_timeout_seconds), else
    6. abort when there was no progress for stall_seconds. Progress is data
       left reaching a new low in the first pass, and after it a pass smaller
       than every pass before (see `_track`), or QEMU tightening its throttle.
    After an abort every sample gets no action.

    An operator acts between samples: `force_complete` (post-copy when the
    session allows it, else the pause of rule 4 at once) and `set_max_downtime`
    (the limit now, and the ceiling of the ramp from then on).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        max_downtime_ms: int,
        allow_postcopy: bool,
        seconds_per_gib: float | None = None,
    ) -> None:
        if max_downtime_ms < 1:
            raise ValueError(f"max_downtime_ms must be at least 1, not {max_downtime_ms}")
        if seconds_per_gib is not None and not seconds_per_gib > 0:
            raise ValueError(f"seconds_per_gib must be positive, not {seconds_per_gib}")
        self.policy = policy
        self.max_downtime_ms = max_downtime_ms
        self.allow_postcopy = allow_postcopy
        self.seconds_per_gib = seconds_per_gib if seconds_per_gib is not None else policy.seconds_per_gib
        self._downtime_ms = self.first_downtime_ms()
        self._throttle_reported = 0
        self._throttle_max = 0
        self._paused = False
        self._postcopy = False
        self._aborted = False
        self._data_total_max = 0
        # The lowest data left seen, when (caller's clock) and in which
        # iteration it was first reached, and the bytes processed by then.
        self._low: int | None = None
        self._low_at = 0.0
        self._low_iteration = 0
        self._processed_at_low = 0
        # The iteration being copied and the most data left seen in it: from the
        # second pass on, progress is a pass smaller than every pass before.
        self._iteration = 0
        self._pass_size = 0
        self._last_processed = 0
        self._last_remaining = 0
        # The most data processed seen, and when it last grew.
        self._processed = 0
        self._processed_at = 0.0

    @property
    def _start_ms(self) -> int:
        return min(self.policy.downtime_start_ms, self.max_downtime_ms)

    def first_downtime_ms(self) -> int:
        """The max downtime to set before the migration starts."""
        if self.policy.downtime_steps == 0:
            return self.max_downtime_ms
        return self._start_ms

    @property
    def finished(self) -> bool:
        """Aborted, or switched to post-copy: nothing more to steer."""
        return self._aborted or self._postcopy

    @property
    def postcopy_enabled(self) -> bool:
        """Whether the policy switches this migration to post-copy by itself (rule 3)."""
        return self.allow_postcopy and self.policy.postcopy_after_iterations > 0

    @property
    def postcopy_armed(self) -> bool:
        """Whether the migration starts able to switch to post-copy: the session
        allows it, whatever the policy's trigger (an operator may force it)."""
        return self.allow_postcopy

    def force_complete(self, sample: Progress, now: float, *, by: str = "") -> PolicyAction | None:
        """An operator's `force-complete`, with the latest sample: post-copy when
        the session allows it, else pause (max downtime raised to what the rest
        needs, as rule 4 does). None when nothing more is steered (post-copy
        already, or aborted)."""
        if self.finished:
            return None
        who = f" by {by}" if by else ""
        if self.postcopy_armed:
            self._postcopy = True
            reason = f"force-complete{who}: switching to post-copy with {_mib(sample.data_remaining)} left"
            return PolicyAction(kind=ActionKind.POSTCOPY, reason=reason, at=now, sample=sample)
        value = self._rest_downtime_ms(sample)
        self._paused = True
        self._downtime_ms = max(self._downtime_ms, value)
        reason = (
            f"force-complete{who} (post-copy not allowed): pausing the guest to copy a last pass of "
            f"{_mib(self._last_pass(sample))} at {_mib(sample.bandwidth_bps)}/s; max downtime -> {value} ms"
        )
        return PolicyAction(kind=ActionKind.PAUSE, reason=reason, at=now, value=value, sample=sample)

    def set_max_downtime(
        self, downtime_ms: int, now: float, *, by: str = "", sample: Progress | None = None
    ) -> PolicyAction | None:
        """An operator's `downtime`: the limit now and from now on (the ramp of
        rule 1 stays at or below it). None when nothing more is steered."""
        if downtime_ms < 1:
            raise ValueError(f"max downtime must be at least 1 ms, not {downtime_ms}")
        if self.finished:
            return None
        before = self._downtime_ms
        self.max_downtime_ms = downtime_ms
        self._downtime_ms = downtime_ms
        who = f" by {by}" if by else ""
        reason = f"set{who}: max downtime {before} -> {downtime_ms} ms"
        return PolicyAction(kind=ActionKind.SET_DOWNTIME, reason=reason, at=now, value=downtime_ms, sample=sample)

    def timeout_seconds(self) -> float:
        """The completion timeout for the largest data total seen so far."""
        return self.policy.completion_timeout(self._data_total_max, self.seconds_per_gib)

    def observe(self, sample: Progress, now: float, *, throttle_percent: int = 0) -> list[PolicyAction]:
        """The actions this sample calls for, in the order to carry them out."""
        if self.finished or sample.data_total == 0:
            return []
        self._data_total_max = max(self._data_total_max, sample.data_total)
        self._track(sample, now)
        if throttle_percent > self._throttle_max:
            # QEMU is still tightening the throttle: the lever is working, so the
            # time without a smaller pass starts again.
            self._throttle_max = throttle_percent
            self._low_at = now
        actions: list[PolicyAction] = []

        def act(kind: ActionKind, reason: str, value: int = 0) -> None:
            actions.append(PolicyAction(kind=kind, reason=reason, at=now, value=value, sample=sample))

        if (step := self._downtime_step(sample)) is not None:
            act(*step)
        if (throttle := self._throttle(sample, throttle_percent)) is not None:
            act(*throttle)
        if (postcopy := self._postcopy_due(sample)) is not None:
            self._postcopy = True
            act(ActionKind.POSTCOPY, postcopy)
            return actions
        if (pause := self._pause_due(sample)) is not None:
            act(*pause)
        if (abort := self._abort_due(sample, now)) is not None:
            self._aborted = True
            act(ActionKind.ABORT, abort)
        return actions

    def _track(self, sample: Progress, now: float) -> None:
        """The lowest data left, and when data processed last grew.

        In the first pass data left falls steadily. After it, each pass copies
        what the guest dirtied during the one before: data left falls towards
        zero within a pass and jumps back at the next, so what shows progress is
        the size of a pass (the most data left seen in it) reaching a new low.
        """
        if self._low is None or sample.data_processed > self._processed:
            self._processed = sample.data_processed
            self._processed_at = now
        if sample.iteration != self._iteration:
            first_repeat = self._iteration <= 1 < sample.iteration
            # Sampled part-way into the new pass: what it has copied already counts
            # too (bytes sent since the last sample, less what the old pass had left).
            follows = self._iteration == sample.iteration - 1 and self._iteration > 0
            copied = sample.data_processed - self._last_processed - self._last_remaining if follows else 0
            self._iteration = sample.iteration
            self._pass_size = sample.data_remaining + max(copied, 0)
            if first_repeat:
                self._low = None  # the first pass's low is no yardstick for the passes after it
        else:
            self._pass_size = max(self._pass_size, sample.data_remaining)
        self._last_processed, self._last_remaining = sample.data_processed, sample.data_remaining
        measure = sample.data_remaining if sample.iteration <= 1 else self._pass_size
        if self._low is None or measure < self._low:
            self._low = measure
            self._low_at = now
            self._low_iteration = sample.iteration
            self._processed_at_low = sample.data_processed

    def _downtime_step(self, sample: Progress) -> tuple[ActionKind, str, int] | None:
        steps = self.policy.downtime_steps
        if steps == 0:
            return None
        step = min(max(sample.iteration - 1, 0), steps)
        start = self._start_ms
        value = start + (self.max_downtime_ms - start) * step // steps
        if value <= self._downtime_ms:
            return None
        reason = (
            f"iteration {sample.iteration}: max downtime {self._downtime_ms} -> {value} ms (step {step} of {steps})"
        )
        self._downtime_ms = value
        return ActionKind.SET_DOWNTIME, reason, value

    def _throttle(self, sample: Progress, percent: int) -> tuple[ActionKind, str, int] | None:
        if percent <= 0:
            return None
        rates = f"dirty rate {_mib(sample.dirty_rate_bps)}/s, bandwidth {_mib(sample.bandwidth_bps)}/s"
        if self._throttle_reported == 0:
            reason = f"QEMU began throttling the guest's vCPUs at {percent}% ({rates})"
        elif percent - self._throttle_reported >= THROTTLE_REPORT_POINTS:
            reason = f"QEMU raised the guest's vCPU throttle {self._throttle_reported}% -> {percent}% ({rates})"
        else:
            return None
        self._throttle_reported = percent
        return ActionKind.AUTO_CONVERGE_ENGAGED, reason, percent

    def _postcopy_due(self, sample: Progress) -> str | None:
        after = self.policy.postcopy_after_iterations
        if not self.postcopy_enabled or sample.iteration < 1 + after:
            return None
        # No new low during the previous iteration, nor so far in this one.
        if self._low_iteration >= sample.iteration - 1:
            return None
        return (
            f"iteration {sample.iteration}: no pass smaller than {_mib(self._low or 0)} "
            f"since iteration {self._low_iteration}; switching to post-copy after {after} iterations"
        )

    def _pause_due(self, sample: Progress) -> tuple[ActionKind, str, int] | None:
        after = self.policy.pause_after_seconds
        elapsed = sample.elapsed_ms / 1000
        if self._paused or after <= 0 or elapsed < after:
            return None
        self._paused = True
        value = self._rest_downtime_ms(sample)
        self._downtime_ms = max(self._downtime_ms, value)
        reason = (
            f"still copying after {_s(elapsed)} (pause after {_s(after)}): pausing the guest to copy a "
            f"last pass of {_mib(self._last_pass(sample))} at {_mib(sample.bandwidth_bps)}/s; max downtime -> {value} ms"
        )
        return ActionKind.PAUSE, reason, value

    def _last_pass(self, sample: Progress) -> int:
        """What a pause copies with the guest stopped (see `_rest_downtime_ms`)."""
        return max(sample.data_remaining, self._pass_size if sample.iteration > 1 else 0)

    def _rest_downtime_ms(self, sample: Progress) -> int:
        """The max downtime a pause needs: 1.5 x data left / bandwidth, at least the
        session's max, at most QEMU's limit. After the first pass the data left
        is counted as the whole pass: mid-pass it is only what this pass still
        copies, while QEMU stops the guest at the end of one, with what the
        guest dirtied meanwhile left (a pause sized by a mid-pass sample never came)."""
        bandwidth = max(sample.bandwidth_bps, 1)
        needed_ms = -(-self._last_pass(sample) * 10 * PAUSE_MARGIN_PERCENT // bandwidth)  # rounded up
        return min(max(needed_ms, self.max_downtime_ms), QEMU_MAX_DOWNTIME_MS)

    def _abort_due(self, sample: Progress, now: float) -> str | None:
        elapsed = sample.elapsed_ms / 1000
        timeout = self.timeout_seconds()
        if elapsed > timeout:
            per_gib = self.seconds_per_gib * self._data_total_max / GIB
            floor = f", at least {_s(self.policy.min_timeout_seconds)}" if per_gib < timeout else ""
            return (
                f"not done after {_s(elapsed)}: completion timeout {_s(timeout)} "
                f"({self.seconds_per_gib:g} s per GiB x {self._data_total_max / GIB:.2f} GiB{floor})"
            )
        stalled = now - self._low_at
        if stalled > self.policy.stall_seconds:
            allowed = f"no progress allowed for {_s(self.policy.stall_seconds)}"
            quiet = now - self._processed_at
            if self._processed <= self._processed_at_low:
                return f"no bytes moved for {_s(quiet)}: network stall? ({_mib(sample.data_remaining)} left, {allowed})"
            what = "data left" if self._low_iteration <= 1 else "the data a pass copies"
            reason = f"{what} has not gone below {_mib(self._low or 0)} for {_s(stalled)}"
            if quiet > 0:
                # Bytes moved after the low, then stopped: say both.
                return f"{reason}, and no bytes moved in the last {_s(quiet)}: network stall? ({allowed})"
            return f"{reason}: the guest dirties memory as fast as it is copied ({allowed})"
        return None
