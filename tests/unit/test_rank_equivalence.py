"""The fast ranking pass decides exactly as judging each host on its own does."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.coordinator.placement import HostFacts, PlacementRules, Rejection, VmDemand, judge, rank
from ferry.proto.host import HealthState
from ferry.proto.network import Attachment, HostNetworks, LibvirtNetwork, NetworkOffer

VERSIONS = st.sampled_from(["9.0.0", "10.0.0", "11.3.0", "8.2.0-rc1"])
NETWORKS = st.one_of(
    st.none(),
    st.builds(
        HostNetworks,
        networks=st.lists(
            st.builds(LibvirtNetwork, name=st.sampled_from(["default", "prod"]), active=st.booleans(),
                      portgroups=st.lists(st.sampled_from(["web", "db"]), max_size=2)),
            max_size=2,
        ),
        devices=st.lists(st.sampled_from(["br0", "eno1"]), max_size=2),
    ),
)


@st.composite
def hosts(draw) -> HostFacts:
    networks = draw(NETWORKS)
    return HostFacts(
        name=draw(st.sampled_from(["hv1", "hv2", "hv3", "hv4", "hv5", "hv6"])),
        up=draw(st.booleans()), health=draw(st.sampled_from(list(HealthState))),
        cpus=draw(st.integers(0, 64)), vcpus_used=draw(st.integers(0, 300)),
        memory_total_mib=draw(st.integers(0, 65536)), memory_free_mib=draw(st.integers(0, 65536)),
        memory_used_mib=draw(st.integers(0, 65536)),
        libvirt_version=draw(VERSIONS), qemu_version=draw(VERSIONS),
        arch=draw(st.sampled_from(["x86_64", "aarch64"])), draining=draw(st.booleans()), cordoned=draw(st.booleans()),
        reserved_vcpus=draw(st.integers(0, 8)), reserved_memory_mib=draw(st.integers(0, 8192)),
        storage=frozenset(draw(st.lists(st.sampled_from(["/nfs", "/ceph"]), max_size=2))),
        networks=None if networks is None else draw(st.sampled_from([networks, NetworkOffer(networks)])),
    )


VMS = st.builds(
    VmDemand,
    name=st.just("vm"), source=st.sampled_from(["hv1", "hv9"]), vcpus=st.integers(0, 16), memory_mib=st.integers(0, 16384),
    libvirt_version=VERSIONS, qemu_version=VERSIONS, arch=st.sampled_from(["x86_64", "aarch64"]),
    shared_storage=st.frozensets(st.sampled_from(["/nfs", "/ceph"])), local_disks=st.booleans(),
    attachments=st.lists(
        st.builds(Attachment, kind=st.sampled_from(["network", "bridge", "direct"]),
                  source=st.sampled_from(["default", "prod", "br0", "eno1"]), portgroup=st.sampled_from(["", "web"])),
        max_size=2,
    ).map(tuple),
)
RULES = st.builds(
    PlacementRules, cpu_allocation_ratio=st.sampled_from([1.0, 1.5, 4.0]), memory_margin_mib=st.sampled_from([0, 128]),
    allow_storage_copy=st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(vm=VMS, candidates=st.lists(hosts(), max_size=12), rules=RULES)
def test_rank_decides_each_host_as_judge_does(vm, candidates, rules):
    ranking = rank(vm, candidates, rules)
    judged = [(h, judge(vm, h, rules)) for h in candidates]
    assert ranking.rejections == [j for _h, j in judged if isinstance(j, Rejection)]
    expected = sorted(((h.name, j) for h, j in judged if not isinstance(j, Rejection)), key=lambda c: (-c[1], c[0]))
    assert ranking.choices == expected
