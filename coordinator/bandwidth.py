"""Sharing each host's migration bandwidth budget between its running migrations. Pure.

A migration crosses two hosts (its source sends, its destination receives) and
takes bandwidth from both budgets. The split is max-min fair: every migration
gets an equal share of its tightest host, and what a migration cannot use (its
own cap is lower, or another host holds it back) goes to the others. When a
migration ends, a new split gives its share to the rest.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Flow:
    session_id: str
    source: str
    dest: str
    # The user's own limit for this migration; 0 = none.
    cap_mib: int = 0


def split(budget_mib: int, flows: list[Flow]) -> dict[str, int]:
    """MiB/s for each migration; 0 means unlimited (no budget and no cap)."""
    if budget_mib <= 0:
        return {f.session_id: f.cap_mib for f in flows}
    remaining: dict[str, float] = {}
    for f in flows:
        remaining.setdefault(f.source, float(budget_mib))
        remaining.setdefault(f.dest, float(budget_mib))
    share: dict[str, float] = {}
    active = list(flows)
    # Water-filling: raise every active flow together until a host's budget or
    # a flow's cap stops it; freeze those flows and go on with the rest.
    while active:
        users: dict[str, int] = {}
        for f in active:
            for host in (f.source, f.dest):
                users[host] = users.get(host, 0) + 1
        # Never below 1 MiB/s (the floor every share gets), so a flow held at 1 by a
        # crowded host is counted at 1 on its other host too.
        level = max(1.0, min(remaining[h] / n for h, n in users.items()))
        caps = [f.cap_mib for f in active if f.cap_mib > 0]
        if caps and min(caps) <= level:
            level = min(caps)
            frozen = [f for f in active if 0 < f.cap_mib <= level]
        else:
            tight = {h for h, n in users.items() if remaining[h] / n <= level + 1e-9}
            frozen = [f for f in active if f.source in tight or f.dest in tight]
        for f in frozen:
            share[f.session_id] = level
            remaining[f.source] -= level
            remaining[f.dest] -= level
        active = [f for f in active if f.session_id not in share]
    # Whole MiB/s, rounded down so a host never exceeds its budget; at least 1,
    # since 0 would mean unlimited to libvirt.
    return {f.session_id: max(1, int(share[f.session_id] + 1e-9)) for f in flows}
