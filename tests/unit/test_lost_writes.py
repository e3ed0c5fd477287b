"""The signs that QEMU lost a lab guest's writes in a move: pure, from consoles and residency."""

from ferry.lab.lost_writes import SILENT_SECONDS, lost_write_signs

BOOTED = "ferry-boot 19d2557b dirty_mb=24 fill_mb=0\nferry-tick 1 1.82 19d2557b\nferry-tick 2 2.83 19d2557b\n"
PANIC = (
    "[   11.936483] RIP: 0010:__run_timers+0x1e8/0x2c0\n"
    "[   11.938766] Kernel panic - not syncing: Fatal exception in interrupt\n"
)
NOW = 1000.0


def test_a_kernel_crash_on_the_host_the_guest_moved_to_is_a_sign() -> None:
    signs = lost_write_signs({"hv1": BOOTED, "hv2": PANIC}, {"hv1": NOW - 20, "hv2": NOW - 15}, (), NOW)
    assert signs is not None and "crashed on hv2 after it had run on hv1" in signs and "Kernel panic" in signs


def test_a_crash_after_moving_back_to_where_it_booted_is_a_sign() -> None:
    # hv1 -> hv3 -> hv1: the boot host's console holds the early ticks and the crash.
    away = "ferry-tick 5 5.90 19d2557b\nferry-tick 6 6.91 19d2557b\n"
    signs = lost_write_signs({"hv1": BOOTED + PANIC, "hv3": away}, {"hv1": NOW - 20, "hv3": NOW - 25}, (), NOW)
    assert signs is not None and "crashed on hv1 after it had run on hv3" in signs


def test_a_crash_where_the_guest_booted_is_no_sign() -> None:
    # It never moved, or crashed before leaving: nothing points at the migration.
    assert lost_write_signs({"hv1": BOOTED + PANIC}, {"hv1": NOW - 20}, (), NOW) is None


def test_a_moved_guest_that_runs_but_prints_nothing_is_a_sign() -> None:
    ticks = "ferry-tick 3 3.85 19d2557b\n"
    signs = lost_write_signs({"hv1": BOOTED, "hv3": ticks}, {"hv1": NOW - 70, "hv3": NOW - 61}, ("hv3",), NOW)
    assert signs is not None and "runs on hv3 after a move" in signs and "61 s" in signs


def test_a_moved_guest_that_still_ticks_is_no_sign() -> None:
    logs = {"hv1": BOOTED, "hv2": "ferry-tick 3 3.85 19d2557b\n"}
    assert lost_write_signs(logs, {"hv1": NOW - 30, "hv2": NOW - 1}, ("hv2",), NOW) is None


def test_a_guest_silent_where_it_booted_is_no_sign() -> None:
    # A failure of the guest on its own host is not a migration's doing.
    assert lost_write_signs({"hv1": BOOTED}, {"hv1": NOW - SILENT_SECONDS - 5}, ("hv1",), NOW) is None


def test_a_guest_that_died_on_its_source_mid_move_is_no_sign() -> None:
    # The destination console exists but is empty, and the guest runs nowhere.
    assert lost_write_signs({"hv1": BOOTED, "hv2": ""}, {"hv1": NOW - 30, "hv2": NOW - 30}, (), NOW) is None
