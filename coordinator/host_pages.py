"""One page of `ferry hosts`. Pure.

Hosts come in name order. A page holds the hosts after the request's `after`,
at most `limit`, and fewer when its encoded size would pass MAX_REPLY_BYTES:
5,000 hosts with ten VMs each are some 15 MB of JSON, and NATS refuses a
message over max_payload (1 MiB by default). The reply says where the next page
starts (`next_after`, the last host's name).
"""

import msgspec

from ferry.coordinator.session_pages import ENVELOPE_BYTES, MAX_REPLY_BYTES
from ferry.proto.api import HostsReply, HostsRequest, HostState, HostView
from ferry.proto.codec import encode

# What a view grows by when its heartbeat age is filled in after the page was cut.
AGE_BYTES = 16


def reply_budget(max_payload: int) -> int:
    """Bytes a page may take: most of what the server accepts (fewer round trips
    for thousands of hosts), never more than MAX_REPLY_BYTES' double."""
    return max(64 * 1024, min(int(max_payload * 0.9), 2 * MAX_REPLY_BYTES))


def summary(view: HostView) -> HostView:
    """The view without its VM list (`vm_count` keeps how many run)."""
    return msgspec.structs.replace(view, vms=[]) if view.vms else view


def hosts_page(
    views: list[HostView], request: HostsRequest, *, leader: str, answered_by: str, max_bytes: int = MAX_REPLY_BYTES
) -> HostsReply:
    """`views` in name order (as the registry gives them)."""
    matching = [v for v in views if request.include_lost or v.state != HostState.LOST]
    start = _first_after(matching, request.after)
    taken: list[HostView] = []
    size = ENVELOPE_BYTES + len(leader) + len(answered_by)
    for view in matching[start:]:
        shown = view if request.vms else summary(view)
        cost = len(encode(shown)) + 1 + AGE_BYTES
        # One host always fits: a heartbeat is smaller than max_payload, and so is its view.
        if len(taken) >= request.limit or (taken and size + cost > max_bytes):
            break
        taken.append(shown)
        size += cost
    more = start + len(taken) < len(matching)
    return HostsReply(
        hosts=taken,
        leader=leader,
        answered_by=answered_by,
        more=more,
        next_after=taken[-1].host if more and taken else "",
        total=len(matching),
    )


def _first_after(views: list[HostView], after: str) -> int:
    """Index of the first host named after `after` (views are in name order)."""
    if not after:
        return 0
    low, high = 0, len(views)
    while low < high:
        mid = (low + high) // 2
        if views[mid].host <= after:
            low = mid + 1
        else:
            high = mid
    return low
