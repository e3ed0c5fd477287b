import pytest

from ferry.agent.progress import outcome_from_stats, percent_done, progress_from_stats
from ferry.proto.session import Outcome, Progress

MIB = 1024 * 1024

# virDomainGetJobStats of a running memory-only migration, second pass.
RUNNING = {
    "type": 2,  # VIR_DOMAIN_JOB_UNBOUNDED
    "operation": 3,
    "time_elapsed": 4210,
    "time_remaining": 0,
    "data_total": 4396630016,
    "data_processed": 3221225472,
    "data_remaining": 1175404544,
    "memory_total": 4396630016,
    "memory_processed": 3221225472,
    "memory_remaining": 1175404544,
    "memory_constant": 120000,
    "memory_normal": 780000,
    "memory_normal_bytes": 3194880000,
    "memory_bps": 943718400,
    "memory_dirty_rate": 25000,
    "memory_page_size": 4096,
    "memory_iteration": 2,
    "memory_postcopy_requests": 0,
    "disk_bps": 0,
    "downtime": 300,
    "setup_time": 12,
}

# A storage copy: the disk dominates the data, memory and disk both move.
WITH_DISK = {
    "type": 2,
    "time_elapsed": 12000,
    "data_total": 21474836480 + 1073741824,
    "data_processed": 10737418240,
    "data_remaining": 11811160064,
    "memory_bps": 104857600,
    "disk_bps": 209715200,
    "disk_total": 21474836480,
    "memory_dirty_rate": 100,
    "memory_page_size": 4096,
    "memory_iteration": 1,
    "downtime": 50,
}

# Statistics of a completed job (VIR_DOMAIN_JOB_STATS_COMPLETED).
COMPLETED = {
    "type": 3,  # VIR_DOMAIN_JOB_COMPLETED
    "time_elapsed": 5873,
    "time_elapsed_net": 5860,
    "downtime": 87,
    "downtime_net": 80,
    "data_total": 4396630016,
    "data_processed": 4420000000,
    "data_remaining": 0,
    "memory_iteration": 4,
}


def test_a_running_migration_becomes_progress():
    assert progress_from_stats(RUNNING) == Progress(
        elapsed_ms=4210,
        data_total=4396630016,
        data_processed=3221225472,
        data_remaining=1175404544,
        bandwidth_bps=943718400,
        dirty_rate_bps=25000 * 4096,
        iteration=2,
        expected_downtime_ms=300,
    )


def test_memory_and_disk_bandwidth_add_up():
    progress = progress_from_stats(WITH_DISK)
    assert progress.bandwidth_bps == 100 * MIB + 200 * MIB
    assert progress.data_total == 22548578304
    assert progress.dirty_rate_bps == 409600


@pytest.mark.parametrize(
    "page_size, bps",
    [(4096, 1000 * 4096), (65536, 1000 * 65536), (2 * MIB, 1000 * 2 * MIB), (None, 1000 * 4096),
     (0, 1000 * 4096)],
)
def test_dirty_rate_is_pages_per_second_times_the_page_size(page_size, bps):
    stats = {"memory_dirty_rate": 1000}
    if page_size is not None:
        stats["memory_page_size"] = page_size
    assert progress_from_stats(stats).dirty_rate_bps == bps


def test_empty_statistics_are_all_zero():
    assert progress_from_stats({}) == Progress()


def test_missing_keys_count_as_zero():
    progress = progress_from_stats({"type": 2, "time_elapsed": 800, "data_total": 1000})
    assert progress == Progress(elapsed_ms=800, data_total=1000)


@pytest.mark.parametrize("junk", [None, "1234", b"1234", [1], {"a": 1}, object(), -5, -0.5])
def test_junk_and_negative_values_count_as_zero(junk):
    stats = {key: junk for key in ("time_elapsed", "data_total", "data_processed", "data_remaining",
                                   "memory_bps", "disk_bps", "memory_dirty_rate", "memory_iteration", "downtime")}
    assert progress_from_stats(stats) == Progress()


def test_junk_in_one_key_leaves_the_others():
    progress = progress_from_stats({**RUNNING, "memory_bps": "fast", "memory_page_size": "big"})
    assert progress.bandwidth_bps == 0
    assert progress.dirty_rate_bps == 25000 * 4096  # a junk page size means the default 4 KiB
    assert progress.data_processed == 3221225472


def test_float_values_are_truncated():
    assert progress_from_stats({"time_elapsed": 12.9, "downtime": 0.4}) == Progress(elapsed_ms=12)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_floats_count_as_zero(value):
    assert progress_from_stats({**RUNNING, "memory_bps": value}).bandwidth_bps == 0


def test_a_completed_job_becomes_an_outcome():
    assert outcome_from_stats(COMPLETED) == Outcome(total_time_ms=5873, downtime_ms=87, data_transferred=4420000000)


@pytest.mark.parametrize(
    "stats, measured, total",
    [
        ({}, 6100, 6100),
        ({"time_elapsed": 0}, 6100, 6100),
        ({"time_elapsed": "n/a"}, 6100, 6100),
        ({"time_elapsed": 5873}, 6100, 5873),
        ({}, 0, 0),
    ],
)
def test_outcome_uses_the_measured_time_only_when_libvirt_kept_none(stats, measured, total):
    assert outcome_from_stats(stats, measured_total_ms=measured).total_time_ms == total


def test_outcome_of_empty_statistics_is_zero():
    assert outcome_from_stats({}) == Outcome()


@pytest.mark.parametrize(
    "processed, remaining, percent",
    [(0, 0, 0.0), (0, 1000, 0.0), (250, 750, 25.0), (1000, 0, 100.0), (3221225472, 1175404544, 73.26582)],
)
def test_percent_done_is_processed_over_processed_plus_remaining(processed, remaining, percent):
    assert percent_done(Progress(data_processed=processed, data_remaining=remaining)) == pytest.approx(percent)


def test_percent_done_ignores_data_total():
    # Data processed grows past data_total when pages are sent again; the ratio stays within 100.
    assert percent_done(Progress(data_total=100, data_processed=300, data_remaining=100)) == 75.0


def test_percent_done_of_a_running_sample():
    assert 0 < percent_done(progress_from_stats(RUNNING)) < 100
