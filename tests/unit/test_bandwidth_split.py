import random
from collections import defaultdict

import pytest

from ferry.coordinator.bandwidth import Flow, split


def flow(session_id, source, dest, cap_mib=0) -> Flow:
    return Flow(session_id, source, dest, cap_mib)


def per_host(flows: list[Flow], shares: dict[str, int]) -> dict[str, int]:
    used: dict[str, int] = defaultdict(int)
    for f in flows:
        used[f.source] += shares[f.session_id]
        used[f.dest] += shares[f.session_id]
    return dict(used)


def test_no_flows_share_nothing():
    assert split(100, []) == {}


@pytest.mark.parametrize(
    "budget, cap, share",
    [
        (100, 0, 100),  # the whole budget
        (100, 30, 30),  # its own cap is lower
        (100, 100, 100),  # cap at the budget
        (100, 250, 100),  # cap above the budget: the budget holds
        (1, 0, 1),
    ],
)
def test_a_single_flow(budget, cap, share):
    assert split(budget, [flow("a", "hv1", "hv2", cap)]) == {"a": share}


@pytest.mark.parametrize("caps", [[0], [0, 0], [40, 0], [40, 70], [0, 0, 5]])
def test_an_unlimited_budget_returns_each_flows_own_cap(caps):
    flows = [flow(f"s{i}", "hv1", "hv2", cap) for i, cap in enumerate(caps)]
    assert split(0, flows) == {f"s{i}": cap for i, cap in enumerate(caps)}


def test_two_flows_between_the_same_hosts_share_equally():
    flows = [flow("a", "hv1", "hv2"), flow("b", "hv1", "hv2")]
    assert split(100, flows) == {"a": 50, "b": 50}


def test_two_flows_in_opposite_directions_share_both_hosts():
    flows = [flow("a", "hv1", "hv2"), flow("b", "hv2", "hv1")]
    assert split(100, flows) == {"a": 50, "b": 50}


def test_flows_sharing_only_a_source_split_the_source():
    flows = [flow("a", "hv1", "hv2"), flow("b", "hv1", "hv3")]
    assert split(100, flows) == {"a": 50, "b": 50}


def test_flows_sharing_only_a_destination_split_the_destination():
    flows = [flow("a", "hv1", "hv3"), flow("b", "hv2", "hv3"), flow("c", "hv4", "hv3"), flow("d", "hv5", "hv3")]
    assert split(100, flows) == {"a": 25, "b": 25, "c": 25, "d": 25}


def test_flows_on_disjoint_hosts_each_get_the_whole_budget():
    flows = [flow("a", "hv1", "hv2"), flow("b", "hv3", "hv4")]
    assert split(100, flows) == {"a": 100, "b": 100}


def test_a_host_that_sends_and_receives_counts_both():
    flows = [flow("a", "hv1", "hv2"), flow("b", "hv2", "hv3")]
    assert split(100, flows) == {"a": 50, "b": 50}


def test_a_flow_held_back_elsewhere_leaves_its_share_to_the_others():
    # hv3 receives three flows (40 each); hv1 sends two, and the one not held by
    # hv3 takes what the other leaves on hv1.
    flows = [flow("a", "hv1", "hv2"), flow("b", "hv1", "hv3"), flow("c", "hv4", "hv3"), flow("d", "hv5", "hv3")]
    assert split(120, flows) == {"a": 80, "b": 40, "c": 40, "d": 40}


def test_a_chain_of_hosts_is_as_tight_as_its_busiest_host():
    flows = [flow("a", "hv1", "hv2"), flow("b", "hv2", "hv3"), flow("c", "hv3", "hv4")]
    assert split(100, flows) == {"a": 50, "b": 50, "c": 50}


@pytest.mark.parametrize(
    "cap_a, shares",
    [
        (10, {"a": 10, "b": 90}),  # a's cap below its share frees budget for b
        (49, {"a": 49, "b": 51}),
        (50, {"a": 50, "b": 50}),  # at the share
        (51, {"a": 50, "b": 50}),  # above the share: no effect
        (500, {"a": 50, "b": 50}),
    ],
)
def test_a_cap_below_the_share_frees_budget_for_the_others(cap_a, shares):
    flows = [flow("a", "hv1", "hv2", cap_a), flow("b", "hv1", "hv3")]
    assert split(100, flows) == shares


def test_several_caps_are_met_in_turn():
    flows = [flow("a", "hv1", "hv2", 10), flow("b", "hv1", "hv3", 20), flow("c", "hv1", "hv4"), flow("d", "hv1", "hv5")]
    assert split(100, flows) == {"a": 10, "b": 20, "c": 35, "d": 35}


def test_caps_above_every_share_change_nothing():
    flows = [flow("a", "hv1", "hv2", 90), flow("b", "hv1", "hv3", 80), flow("c", "hv1", "hv4", 70)]
    assert split(90, flows) == {"a": 30, "b": 30, "c": 30}


def test_a_capped_flow_frees_budget_only_on_its_own_hosts():
    # a is capped at 10 on hv1/hv2; hv3's two flows still split hv3 evenly.
    flows = [flow("a", "hv1", "hv2", 10), flow("b", "hv1", "hv3"), flow("c", "hv4", "hv3")]
    assert split(100, flows) == {"a": 10, "b": 50, "c": 50}


def test_when_a_flow_ends_the_next_split_gives_its_share_to_the_rest():
    flows = [flow("a", "hv1", "hv2"), flow("b", "hv1", "hv3"), flow("c", "hv1", "hv4")]
    assert split(90, flows) == {"a": 30, "b": 30, "c": 30}
    assert split(90, [f for f in flows if f.session_id != "b"]) == {"a": 45, "c": 45}
    assert split(90, [flows[2]]) == {"c": 90}


def test_when_a_flow_ends_a_flow_held_by_another_host_does_not_change():
    flows = [flow("a", "hv1", "hv2"), flow("b", "hv1", "hv3"), flow("c", "hv4", "hv3"), flow("d", "hv5", "hv3")]
    after = split(120, [f for f in flows if f.session_id != "a"])
    assert after == {"b": 40, "c": 40, "d": 40}


@pytest.mark.parametrize("budget, n, each", [(100, 3, 33), (100, 6, 16), (10, 4, 2), (7, 7, 1), (1000, 7, 142)])
def test_shares_are_whole_mib_rounded_down(budget, n, each):
    flows = [flow(f"s{i}", "hv1", f"dst{i}") for i in range(n)]
    assert split(budget, flows) == {f"s{i}": each for i in range(n)}


def test_a_share_is_at_least_one_since_zero_would_mean_unlimited():
    flows = [flow(f"s{i}", "hv1", f"dst{i}") for i in range(5)]
    assert split(2, flows) == {f"s{i}": 1 for i in range(5)}


def test_the_minimum_of_one_on_a_crowded_host_is_counted_on_its_other_host():
    # hv2 receives six flows on a budget of 3, so a and b get the minimum of 1;
    # hv1 sends a, b and c, so c may only take what is left of hv1's 3.
    flows = [flow("a", "hv1", "hv2"), flow("b", "hv1", "hv2"), flow("c", "hv1", "hv3")]
    flows += [flow(f"x{i}", f"src{i}", "hv2") for i in range(4)]
    shares = split(3, flows)
    assert (shares["a"], shares["b"], shares["c"]) == (1, 1, 1)
    assert per_host(flows, shares)["hv1"] == 3


def test_a_split_is_the_same_whatever_the_order_of_the_flows():
    flows = [flow("a", "hv1", "hv2", 15), flow("b", "hv1", "hv3"), flow("c", "hv4", "hv3"), flow("d", "hv2", "hv4")]
    assert split(100, flows) == split(100, list(reversed(flows)))


def random_flows(rng: random.Random) -> list[Flow]:
    hosts = [f"hv{i}" for i in range(rng.randint(2, 6))]
    flows = []
    for i in range(rng.randint(1, 20)):
        source, dest = rng.sample(hosts, 2)
        cap = rng.choice([0, 0, 0, 1, 5, 20, 100, 400])
        flows.append(flow(f"s{i}", source, dest, cap))
    return flows


@pytest.mark.parametrize("seed", range(200))
def test_no_host_exceeds_its_budget_when_it_carries_no_more_flows_than_mib(seed):
    rng = random.Random(seed)
    budget = rng.choice([2, 3, 4, 5, 10, 64, 100, 1000])
    flows = random_flows(rng)
    shares = split(budget, flows)
    assert set(shares) == {f.session_id for f in flows}
    count: dict[str, int] = defaultdict(int)
    for f in flows:
        count[f.source] += 1
        count[f.dest] += 1
    for host, used in per_host(flows, shares).items():
        if count[host] <= budget:
            assert used <= budget, (host, count[host], used)
    for f in flows:
        assert shares[f.session_id] >= 1
        if f.cap_mib:
            assert shares[f.session_id] <= f.cap_mib


@pytest.mark.parametrize("seed", range(60))
def test_every_uncapped_flow_is_held_back_by_a_host_that_is_nearly_full(seed):
    # Max-min: a flow below its cap could not get more without taking from a
    # flow on a full host that has no less than it.
    rng = random.Random(seed)
    budget = rng.choice([64, 100, 1000])
    flows = random_flows(rng)
    shares = split(budget, flows)
    used = per_host(flows, shares)
    on: dict[str, list[Flow]] = defaultdict(list)
    for f in flows:
        on[f.source].append(f)
        on[f.dest].append(f)
    for f in flows:
        if f.cap_mib and shares[f.session_id] == f.cap_mib:
            continue
        slack = len(on[f.source]) + len(on[f.dest])  # rounding down leaves less than 1 per flow
        assert any(
            used[h] > budget - slack and shares[f.session_id] + 1 >= max(shares[g.session_id] for g in on[h])
            for h in (f.source, f.dest)
        ), (f, shares)
