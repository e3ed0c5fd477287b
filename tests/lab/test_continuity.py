"""The continuity checker, over literal console logs (no lab needed)."""

from __future__ import annotations

import pytest

from ferry.lab.continuity import check_continuity, parse_console

A, B = "7fb6f967", "0c1d2e3f"


def boot(boot_id: str) -> str:
    return f"ferry-boot {boot_id} dirty_mb=0\n"


def ticks(boot_id: str, counters: range, uptime_of_first: float | None = None) -> str:
    start = counters.start + 0.5 if uptime_of_first is None else uptime_of_first
    return "".join(f"ferry-tick {n} {start + (n - counters.start):.2f} {boot_id}\n" for n in counters)


@pytest.mark.parametrize(
    ("logs", "current", "order"),
    [
        ({"hv1": boot(A) + ticks(A, range(1, 6))}, "hv1", ("hv1",)),
        ({"hv1": boot(A) + ticks(A, range(1, 6)), "hv2": ticks(A, range(6, 10))}, "hv2", ("hv1", "hv2")),
        # There and back: the log on hv1 is appended to, not replaced.
        (
            {"hv1": boot(A) + ticks(A, range(1, 4)) + ticks(A, range(7, 9)), "hv2": ticks(A, range(4, 7))},
            "hv1",
            ("hv1", "hv2", "hv1"),
        ),
        # A line cut in two at the move costs one tick, which is allowed.
        (
            {"hv1": boot(A) + ticks(A, range(1, 4)) + "ferry-tick 4 4.5", "hv2": f"0 {A}\n" + ticks(A, range(5, 8))},
            "hv2",
            ("hv1", "hv2"),
        ),
        # Kernel messages and other noise between ticks are ignored.
        ({"hv1": "[    0.0] Linux version 6.1\n" + boot(A) + "random: crng init done\n" + ticks(A, range(1, 4))}, "hv1", ("hv1",)),
    ],
)
def test_a_guest_that_kept_running(logs: dict[str, str], current: str, order: tuple[str, ...]) -> None:
    report = check_continuity(logs)
    assert report.ok, report.problems
    assert report.current_host == current
    assert report.hosts_in_order == order
    assert report.boot_ids == (A,)


@pytest.mark.parametrize(
    ("logs", "problem"),
    [
        # Restarted on the destination instead of moved.
        ({"hv1": boot(A) + ticks(A, range(1, 6)), "hv2": boot(B) + ticks(B, range(1, 4))}, "booted 2 times"),
        ({"hv1": boot(A) + ticks(A, range(1, 6)), "hv2": boot(B) + ticks(B, range(1, 4))}, "tick 1 was printed on both"),
        ({"hv1": boot(A) + ticks(A, range(1, 6)), "hv2": ticks(B, range(6, 9))}, "ticks come from 2 boots"),
        # Restarted in place.
        ({"hv1": boot(A) + ticks(A, range(1, 4)) + ticks(A, range(1, 3))}, "counter went back from 3 to 1"),
        # Two copies running at once.
        ({"hv1": boot(A) + ticks(A, range(1, 7)), "hv2": ticks(A, range(5, 9))}, "tick 5 was printed on both"),
        # A long silence: paused or output lost.
        ({"hv1": boot(A) + ticks(A, range(1, 4)), "hv2": ticks(A, range(9, 11))}, "ticks 4..8 are missing"),
        # The clock went back although the counter went on.
        ({"hv1": boot(A) + ticks(A, range(1, 6)), "hv2": ticks(A, range(6, 9), uptime_of_first=2.0)}, "uptime went back"),
        ({"hv1": "", "hv2": "garbage\n"}, "no ticks"),
        ({}, "no ticks"),
    ],
)
def test_a_guest_that_did_not_keep_running(logs: dict[str, str], problem: str) -> None:
    report = check_continuity(logs)
    assert not report.ok
    assert any(problem in p for p in report.problems), report.problems


def test_current_host_is_where_the_newest_tick_was_printed() -> None:
    report = check_continuity({"hv2": boot(A) + ticks(A, range(1, 3)), "hv1": ticks(A, range(3, 5))})
    assert (report.current_host, report.first_tick, report.last_tick) == ("hv1", 1, 4)


def test_after_a_restart_the_newest_log_names_the_current_host() -> None:
    logs = {"hv1": boot(A) + ticks(A, range(1, 9)), "hv2": boot(B) + ticks(B, range(1, 3))}
    assert check_continuity(logs).current_host == "hv1"  # by counter alone
    assert check_continuity(logs, modified={"hv1": 100.0, "hv2": 160.0}).current_host == "hv2"


def test_a_tick_without_its_boot_id_is_not_read() -> None:
    assert parse_console("hv1", "ferry-tick 12 13.4\nferry-tick 13 14.50 7fb6f9\n").ticks == ()


def test_allowed_missing_ticks_are_a_parameter() -> None:
    logs = {"hv1": boot(A) + ticks(A, range(1, 4)), "hv2": ticks(A, range(5, 7))}
    assert check_continuity(logs).ok
    assert not check_continuity(logs, max_missing=0).ok
