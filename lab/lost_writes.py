"""Signs that a lab guest's memory was corrupted while it moved: it crashed or
hangs on the host it moved to.

QEMU before 9.0 does not track some stores of a TCG guest during live migration
(README, "Supported versions"), so there a guest now and then arrives with
stale memory. The lab needs QEMU >= 9.0; these signs stay as a diagnostic: a
failed lab test names them (tests/support/lost_write_report.py), and
`python -m bench.lost_writes` counts them per stack. Ferry copies no guest
memory itself (QEMU does), so these signs point below Ferry. Pure: the caller
reads the consoles and asks libvirt.
"""

from __future__ import annotations

import re

from ferry.lab.continuity import parse_console

# What a crashing Linux guest prints on its console.
CRASH_MARKERS = ("Kernel panic", "BUG: ", "Oops: ", "general protection fault", "invalid opcode: ")
# A guest prints a tick every second; this long without a line, a running guest hangs.
SILENT_SECONDS = 10.0
KERNEL_UPTIME = re.compile(r"^\[\s*(\d+\.\d+)\]")


def lost_write_signs(
    logs: dict[str, str], log_times: dict[str, float], running_on: tuple[str, ...], now: float
) -> str | None:
    """Why the guest looks corrupted by a move, or None.

    ``logs`` are its consoles by host, and ``log_times`` when each was last
    written. A crash counts when the guest had ticked on another host before it
    (by guest uptime), so it had moved, possibly back to where it booted. A
    running guest that has printed nothing for SILENT_SECONDS counts when it has
    a console on more than one host (a move was made).
    """
    ticks = {host: [tick.uptime for tick in parse_console(host, text).ticks] for host, text in logs.items()}
    for host, text in logs.items():
        crash = next((line.strip() for line in text.splitlines() if any(m in line for m in CRASH_MARKERS)), None)
        if crash is None:
            continue
        at = KERNEL_UPTIME.match(crash)
        before = sorted(
            h for h, ups in ticks.items() if h != host and ups and (at is None or min(ups) < float(at.group(1)))
        )
        if before:
            return f"its kernel crashed on {host} after it had run on {', '.join(before)}: {crash}"
    if len(logs) < 2:
        return None
    for host in running_on:
        written = log_times.get(host)
        if written is not None and now - written > SILENT_SECONDS:
            return f"it runs on {host} after a move but has printed nothing for {now - written:.0f} s"
    return None
