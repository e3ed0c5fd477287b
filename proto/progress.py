"""A running migration's progress, as the source samples it from its job statistics."""

import msgspec

from ferry.proto.names import NonNegative


class Progress(msgspec.Struct, frozen=True):
    elapsed_ms: NonNegative = 0
    data_total: NonNegative = 0
    data_processed: NonNegative = 0
    data_remaining: NonNegative = 0
    bandwidth_bps: NonNegative = 0
    dirty_rate_bps: NonNegative = 0
    iteration: NonNegative = 0
    expected_downtime_ms: NonNegative = 0
    # Filled in by the coordinator (coordinator/progress_estimate.py): percent that never
    # runs backwards, and seconds to the end with a range (None: not known).
    percent: float = 0.0
    eta_seconds: float | None = None
    eta_low: float | None = None
    eta_high: float | None = None
