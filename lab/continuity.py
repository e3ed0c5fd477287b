"""Did a guest keep running across moves? Read from its console logs on all hosts.

The guest prints ``ferry-boot <boot-id> ...`` once per boot and
``ferry-tick <counter> <uptime> <boot-id>`` every second on its serial port,
and each host logs the serial port of the guests it runs to its own file. A
guest that moved without restarting shows one boot, and one counter sequence
that continues from host to host with its uptime still growing. A restart shows
a second boot, a counter that starts again, or a second boot id; two running
copies show the same counter on two hosts.

``check_continuity`` is pure (text in, report out); ``guest_continuity`` reads the files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ferry.lab.layout import LabLayout

# The boot id is required: a line cut in two at a move ("ferry-tick 12 13.4" on
# one host, "5 7fb6f967" on the next) must not parse as a tick with a wrong uptime.
TICK = re.compile(r"ferry-tick (\d+) (\d+(?:\.\d+)?) ([0-9a-f]{8})\s*$")
BOOT = re.compile(r"ferry-boot ([0-9a-f]{8})\b")
# Ticks lost without a restart: a line split across hosts at a move costs one.
DEFAULT_MAX_MISSING = 2


@dataclass(frozen=True)
class Tick:
    host: str
    counter: int
    uptime: float
    boot_id: str


@dataclass(frozen=True)
class ConsoleLog:
    host: str
    boots: tuple[str, ...]  # boot ids in file order
    ticks: tuple[Tick, ...]  # in file order


@dataclass(frozen=True)
class ContinuityReport:
    ok: bool
    current_host: str | None  # the host that printed the newest tick
    hosts_in_order: tuple[str, ...]  # where the guest ran, in order, e.g. ("hv1", "hv2", "hv1")
    first_tick: int | None
    last_tick: int | None
    boot_ids: tuple[str, ...]
    problems: tuple[str, ...]

    def explain(self) -> str:
        if self.ok:
            return f"one boot, ticks {self.first_tick}..{self.last_tick} across {' -> '.join(self.hosts_in_order)}"
        return "; ".join(self.problems)


def parse_console(host: str, text: str) -> ConsoleLog:
    boots, ticks = [], []
    for line in text.splitlines():
        if (tick := TICK.search(line)) is not None:
            ticks.append(Tick(host, int(tick.group(1)), float(tick.group(2)), tick.group(3)))
        elif (boot := BOOT.search(line)) is not None:
            boots.append(boot.group(1))
    return ConsoleLog(host, tuple(boots), tuple(ticks))


def check_continuity(
    logs: Mapping[str, str],
    max_missing: int = DEFAULT_MAX_MISSING,
    modified: Mapping[str, float] | None = None,
) -> ContinuityReport:
    """``logs`` maps host name to the text of the guest's console log on that host.

    ``modified`` (host -> when its log last changed, any clock) decides the
    current host when the counter cannot: after a restart the newest counter
    need not be the newest line.
    """
    parsed = [parse_console(host, text) for host, text in sorted(logs.items())]
    problems: list[str] = []

    boots = [boot for log in parsed for boot in log.boots]
    if len(boots) > 1:
        where = ", ".join(f"{log.host}: {len(log.boots)}" for log in parsed if log.boots)
        problems.append(f"the guest booted {len(boots)} times ({where})")

    for log in parsed:
        for before, after in zip(log.ticks, log.ticks[1:]):
            if after.counter <= before.counter:
                problems.append(f"on {log.host} the counter went back from {before.counter} to {after.counter} (a restart)")

    ticks = sorted((t for log in parsed for t in log.ticks), key=lambda t: (t.counter, t.host))
    boot_ids = tuple(dict.fromkeys(t.boot_id for t in ticks))
    if len(boot_ids) > 1:
        problems.append(f"ticks come from {len(boot_ids)} boots ({', '.join(boot_ids)})")
    if not ticks:
        problems.append("no ticks in any console log (the guest never ran, or did not boot)")

    for before, after in zip(ticks, ticks[1:]):
        if after.counter == before.counter:
            problems.append(f"tick {after.counter} was printed on both {before.host} and {after.host} (two copies ran)")
        elif after.counter - before.counter - 1 > max_missing:
            problems.append(
                f"ticks {before.counter + 1}..{after.counter - 1} are missing between {before.host} and {after.host}"
            )
        if after.uptime <= before.uptime and after.counter != before.counter:
            problems.append(
                f"uptime went back from {before.uptime} s (tick {before.counter}, {before.host}) "
                f"to {after.uptime} s (tick {after.counter}, {after.host})"
            )

    hosts_in_order: list[str] = []
    for tick in ticks:
        if not hosts_in_order or hosts_in_order[-1] != tick.host:
            hosts_in_order.append(tick.host)
    current_host = ticks[-1].host if ticks else None
    if modified and ticks:
        ticking = {t.host for t in ticks}
        current_host = max(ticking, key=lambda host: modified.get(host, float("-inf")))
    return ContinuityReport(
        ok=not problems,
        current_host=current_host,
        hosts_in_order=tuple(hosts_in_order),
        first_tick=ticks[0].counter if ticks else None,
        last_tick=ticks[-1].counter if ticks else None,
        boot_ids=boot_ids,
        problems=tuple(dict.fromkeys(problems)),
    )


def read_console_logs(layout: LabLayout, guest: str) -> dict[str, str]:
    """The guest's console log on every host that has one."""
    logs = {}
    for host in layout.hosts:
        path = host.console_log(guest)
        if path.exists():
            logs[host.name] = path.read_text(errors="replace")
    return logs


def console_log_times(layout: LabLayout, guest: str) -> dict[str, float]:
    return {h.name: h.console_log(guest).stat().st_mtime for h in layout.hosts if h.console_log(guest).exists()}


def guest_continuity(layout: LabLayout, guest: str, max_missing: int = DEFAULT_MAX_MISSING) -> ContinuityReport:
    return check_continuity(read_console_logs(layout, guest), max_missing, console_log_times(layout, guest))


def last_tick_on(layout: LabLayout, guest: str, host: str) -> int:
    """The newest counter the guest printed on ``host`` (0 when none yet)."""
    path = layout.host(host).console_log(guest)
    text = path.read_text(errors="replace") if path.exists() else ""
    ticks = parse_console(host, text).ticks
    return ticks[-1].counter if ticks else 0
