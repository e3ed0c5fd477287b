"""libvirt job statistics into Ferry's progress and outcome. Pure."""

import math
from collections.abc import Mapping
from typing import Any

from ferry.proto.session import Outcome, Progress


def _int(stats: Mapping[str, Any], key: str) -> int:
    value = stats.get(key, 0)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return 0
    return max(0, int(value))


def progress_from_stats(stats: Mapping[str, Any]) -> Progress:
    """Memory and disk together: with storage copy the disk is most of the data."""
    page_size = _int(stats, "memory_page_size") or 4096
    return Progress(
        elapsed_ms=_int(stats, "time_elapsed"),
        data_total=_int(stats, "data_total"),
        data_processed=_int(stats, "data_processed"),
        data_remaining=_int(stats, "data_remaining"),
        bandwidth_bps=_int(stats, "memory_bps") + _int(stats, "disk_bps"),
        dirty_rate_bps=_int(stats, "memory_dirty_rate") * page_size,
        iteration=_int(stats, "memory_iteration"),
        # While the job runs, "downtime" is what QEMU expects the final pause to take.
        expected_downtime_ms=_int(stats, "downtime"),
    )


def outcome_from_stats(stats: Mapping[str, Any], *, measured_total_ms: int = 0) -> Outcome:
    """From a completed job's statistics; `measured_total_ms` when libvirt kept none."""
    return Outcome(
        total_time_ms=_int(stats, "time_elapsed") or measured_total_ms,
        downtime_ms=_int(stats, "downtime"),
        data_transferred=_int(stats, "data_processed"),
    )


def percent_done(progress: Progress) -> float:
    done, left = progress.data_processed, progress.data_remaining
    return 100.0 * done / (done + left) if done + left else 0.0
