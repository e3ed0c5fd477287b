"""The placement index shortlists exactly what ranking every host says, cut short."""

from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.coordinator.placement import HostFacts, PlacementRules, Rejection, VmDemand, rank
from ferry.coordinator.placement_index import PlacementIndex, Shortlist, shortlist_lines
from ferry.proto.host import HealthState
from ferry.proto.network import Attachment, HostNetworks, LibvirtNetwork, NetworkOffer

from .test_rank_equivalence import RULES, VMS

NAMES = [f"hv{n}" for n in range(1, 13)]
OFFERS = [
    None,
    NetworkOffer(HostNetworks(devices=["br0"])),
    NetworkOffer(HostNetworks(networks=[LibvirtNetwork(name="prod", active=True, portgroups=["web"])])),
]


@st.composite
def fleet(draw) -> list[HostFacts]:
    """Hosts of a few sizes and kinds, with few distinct loads (so scores tie)."""
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=len(NAMES)))
    return [
        HostFacts(
            name=name,
            up=draw(st.sampled_from([True, True, False])),
            health=draw(st.sampled_from([HealthState.OK, HealthState.OK, HealthState.WARNING])),
            cpus=draw(st.sampled_from([0, 8, 16])),
            vcpus_used=draw(st.sampled_from([0, 8, 30, 60])),
            memory_total_mib=draw(st.sampled_from([0, 16384, 65536])),
            memory_free_mib=draw(st.sampled_from([0, 4096, 16384, 65536])),
            memory_used_mib=draw(st.sampled_from([0, 8192, 32768])),
            libvirt_version=draw(st.sampled_from(["9.0.0", "11.3.0"])),
            qemu_version=draw(st.sampled_from(["9.0.0", "10.0.0"])),
            arch=draw(st.sampled_from(["x86_64", "x86_64", "aarch64"])),
            draining=draw(st.sampled_from([False, False, False, True])),
            cordoned=draw(st.sampled_from([False, False, False, True])),
            storage=frozenset(draw(st.lists(st.sampled_from(["/nfs", "/ceph"]), max_size=2))),
            networks=draw(st.sampled_from(OFFERS)),
        )
        for name in names
    ]


def held_on(hosts: list[HostFacts], draw) -> dict[str, tuple[int, int]]:
    chosen = draw(st.lists(st.sampled_from([h.name for h in hosts]), unique=True, max_size=3)) if hosts else []
    return {name: (draw(st.integers(0, 8)), draw(st.sampled_from([0, 2048, 40000]))) for name in chosen}


def with_held(hosts: list[HostFacts], held: dict[str, tuple[int, int]]) -> list[HostFacts]:
    return [
        replace(h, reserved_vcpus=held[h.name][0], reserved_memory_mib=held[h.name][1]) if h.name in held else h for h in hosts
    ]


def assert_cut_of(short: Shortlist, vm: VmDemand, hosts: list[HostFacts], rules: PlacementRules, shown: int) -> None:
    ranking = rank(vm, hosts, rules)
    assert short.choices == ranking.choices[:shown]
    assert short.candidate_count == len(ranking.choices)
    assert short.rejected == Counter(r.code for r in ranking.rejections)
    others = [r for r in ranking.rejections if r.code != "same_host"]
    assert len(short.rejections) == min(shown, len(others))
    assert all(r in ranking.rejections for r in short.rejections)
    assert short.hosts == len(hosts)


@settings(max_examples=500, deadline=None)
@given(vm=VMS, hosts=fleet(), rules=RULES, shown=st.sampled_from([1, 2, 3, 20]), data=st.data())
def test_a_shortlist_is_the_ranking_cut_short(vm, hosts, rules, shown, data):
    held = held_on(hosts, data.draw)
    index = PlacementIndex()
    index.sync(hosts)
    assert_cut_of(index.shortlist(vm, rules, held, shown), vm, with_held(hosts, held), rules, shown)


@settings(max_examples=300, deadline=None)
@given(vm=VMS, before=fleet(), after=fleet(), rules=RULES, shown=st.sampled_from([1, 3]), data=st.data())
def test_a_shortlist_follows_hosts_that_change_come_and_go(vm, before, after, rules, shown, data):
    index = PlacementIndex()
    index.sync(before)
    # Twice with the same ratio, then other hosts: the sorted orders are kept up, not rebuilt.
    index.shortlist(vm, rules, None, shown)
    kept = {h.name: h for h in before}
    now = [kept[h.name] if h.name in kept and data.draw(st.booleans()) else h for h in after]
    index.sync(now)
    assert_cut_of(index.shortlist(vm, rules, None, shown), vm, now, rules, shown)


def test_hosts_of_one_kind_are_read_from_the_top():
    hosts = [
        HostFacts(
            name=f"gen{n:04d}",
            up=True,
            health=HealthState.OK,
            cpus=32,
            vcpus_used=n % 40,
            memory_total_mib=131072,
            memory_free_mib=131072 - 1000 * (n % 50),
            memory_used_mib=1000 * (n % 50),
            libvirt_version="11.3.0",
            qemu_version="10.0.0",
        )
        for n in range(2000)
    ]
    vm = VmDemand(name="vm", source="gen0007", vcpus=4, memory_mib=8192, libvirt_version="11.3.0", qemu_version="10.0.0")
    index = PlacementIndex()
    index.sync(hosts)
    short = index.shortlist(vm, PlacementRules(), {"gen0000": (4, 8192)}, shown=5)
    assert_cut_of(short, vm, with_held(hosts, {"gen0000": (4, 8192)}), PlacementRules(), 5)
    assert short.best == "gen0000" or short.choices[0][1] >= short.choices[-1][1]


def test_lines_say_the_first_rejections_and_count_the_rest():
    hosts = [
        HostFacts(
            name=f"hv{n}",
            up=n % 2 == 0,
            health=HealthState.OK,
            cpus=8,
            vcpus_used=0,
            memory_total_mib=16384,
            memory_free_mib=16384,
            memory_used_mib=0,
            libvirt_version="11.3.0",
            qemu_version="10.0.0",
        )
        for n in range(1, 8)
    ]
    vm = VmDemand(
        name="vm",
        source="hv2",
        vcpus=1,
        memory_mib=1024,
        libvirt_version="11.3.0",
        qemu_version="10.0.0",
        attachments=(Attachment(kind="bridge", source="br0"),),
    )
    index = PlacementIndex()
    index.sync(hosts)
    lines = shortlist_lines(index.shortlist(vm, shown=2))
    assert lines == [
        "hv1: hv1 is lost (no heartbeat)",
        "hv3: hv3 is lost (no heartbeat)",
        "2 more hosts: host_lost 2",
    ]


def test_a_dry_run_names_the_first_rejections_and_counts_the_rest_by_code():
    short = Shortlist(
        rejections=[Rejection(f"h{i}", "no_capacity" if i % 3 else "host_draining", "why") for i in range(5)],
        rejected=Counter(no_capacity=66, host_draining=34, same_host=1),
    )
    lines = shortlist_lines(short)
    assert lines[:5] == [f"h{i}: why" for i in range(5)]
    assert lines[5] == "95 more hosts: no_capacity 63, host_draining 32"
    assert shortlist_lines(Shortlist(rejections=short.rejections[:3], rejected=Counter(no_capacity=2, host_draining=1))) == [
        "h0: why",
        "h1: why",
        "h2: why",
    ]
