"""Signs that QEMU lost a lab guest's memory writes while moving it.

Debian 12's QEMU (7.2) does not track some stores of a TCG guest during live
migration (fixed in QEMU 9.0; README, "The lab's QEMU and TCG"), so now and then
a guest arrives with stale memory and crashes or hangs on its new host. Ferry
copies no guest memory itself (QEMU does), so these signs point at QEMU. The
test suite runs such a test once more instead of failing it (tests/lab/conftest.py)
and prints the signs. A guest that never moved, or that fails in any other way,
gets no second run. Pure: the caller reads the consoles and asks libvirt.
"""

from __future__ import annotations

from lab.continuity import BOOT

# What a crashing Linux guest prints on its console.
CRASH_MARKERS = ("Kernel panic", "BUG: ", "Oops: ", "general protection fault", "invalid opcode: ")
# A guest prints a tick every second; this long without a line, a running guest hangs.
SILENT_SECONDS = 10.0


def lost_write_signs(
    logs: dict[str, str], log_times: dict[str, float], running_on: tuple[str, ...], now: float
) -> str | None:
    """Why the guest looks corrupted by its move, or None.

    ``logs`` are its consoles by host, and ``log_times`` when each was last
    written. Only hosts it moved to count: the console there has no boot line.
    """
    arrived_on = [host for host, text in logs.items() if not BOOT.search(text)]
    for host in arrived_on:
        crash = next((line for line in logs[host].splitlines() if any(m in line for m in CRASH_MARKERS)), None)
        if crash is not None:
            return f"its kernel crashed on {host}, where it had moved: {crash.strip()}"
    for host in running_on:
        written = log_times.get(host)
        if host in arrived_on and written is not None and now - written > SILENT_SECONDS:
            return f"it runs on {host}, where it had moved, but has printed nothing for {now - written:.0f} s"
    return None
