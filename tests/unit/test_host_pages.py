"""`ferry hosts` in pages under NATS's max_payload, and a dry run's lists cut to a few."""

import msgspec

from ferry.coordinator.host_pages import hosts_page, reply_budget
from ferry.proto.api import HostsReply, HostsRequest, HostState, HostView
from ferry.proto.codec import encode
from ferry.proto.host import Capacity, HealthState, VmInfo


def view(name: str, vms: int = 10, state: HostState = HostState.UP) -> HostView:
    return HostView(
        host=name, state=state, health=HealthState.OK, last_seen_age=0.5,
        capacity=Capacity(cpus=32, memory_total_mib=131072, memory_free_mib=40000),
        vms=[VmInfo(name=f"{name}-vm{n:02d}", uuid="x" * 36, vcpus=4, memory_mib=8192) for n in range(vms)],
        vm_count=vms,
    )


def every_page(views: list[HostView], request: HostsRequest, max_bytes: int) -> list[HostsReply]:
    pages = []
    while True:
        page = hosts_page(views, request, leader="c1", answered_by="c2", max_bytes=max_bytes)
        pages.append(page)
        if not page.more:
            return pages
        request = msgspec.structs.replace(request, after=page.next_after)


def test_five_thousand_hosts_come_in_pages_each_under_the_cap_and_none_is_lost_or_repeated():
    views = [view(f"gen{i:05d}") for i in range(1, 5001)]
    pages = every_page(views, HostsRequest(), max_bytes=512 * 1024)
    assert len(pages) > 10
    assert all(len(encode(p)) <= 512 * 1024 for p in pages)
    assert [h.host for p in pages for h in p.hosts] == [v.host for v in views]
    assert all(p.total == 5000 and p.leader == "c1" and p.answered_by == "c2" for p in pages)
    assert [p.more for p in pages] == [True] * (len(pages) - 1) + [False]


def test_a_summary_leaves_the_vm_lists_out_and_keeps_the_counts():
    views = [view(f"hv{i:04d}") for i in range(1, 2001)]
    (page,) = every_page(views, HostsRequest(vms=False), max_bytes=1024 * 1024)
    assert len(page.hosts) == 2000 and all(h.vms == [] and h.vm_count == 10 for h in page.hosts)


def test_limit_lost_hosts_and_a_cursor_between_names():
    views = [view("a"), view("b", state=HostState.LOST), view("c"), view("d")]
    page = hosts_page(views, HostsRequest(limit=2), leader="", answered_by="c1")
    assert [h.host for h in page.hosts] == ["a", "b"] and page.more and page.next_after == "b"
    up = hosts_page(views, HostsRequest(include_lost=False), leader="", answered_by="c1")
    assert [h.host for h in up.hosts] == ["a", "c", "d"] and up.total == 3 and not up.more
    # A cursor naming a host that has gone since still finds its place.
    after = hosts_page(views, HostsRequest(after="bb"), leader="", answered_by="c1")
    assert [h.host for h in after.hosts] == ["c", "d"]


def test_one_host_bigger_than_the_cap_still_comes_alone():
    page = hosts_page([view("big", vms=50), view("next")], HostsRequest(), leader="", answered_by="c1", max_bytes=100)
    assert [h.host for h in page.hosts] == ["big"] and page.more and page.next_after == "big"


def test_a_page_cut_before_the_ages_are_filled_in_stays_under_the_cap():
    views = [msgspec.structs.replace(view(f"gen{i:05d}"), last_seen_age=0.0) for i in range(1, 2001)]
    cap = reply_budget(1024 * 1024)
    page = hosts_page(views, HostsRequest(), leader="c1", answered_by="c1", max_bytes=cap)
    aged = msgspec.structs.replace(page, hosts=[msgspec.structs.replace(h, last_seen_age=123456.789) for h in page.hosts])
    assert page.more and len(encode(aged)) <= cap < 1024 * 1024
    assert reply_budget(64 * 1024 * 1024) == 2 * 512 * 1024 and reply_budget(1000) == 64 * 1024
