"""What is restarted when a host is dead, in which order and where (coordinator/restart_plan.py),
and which definitions the coordinator keeps (coordinator/domain_copies.py). Pure."""

from ferry.coordinator.domain_copies import forgotten, stale
from ferry.coordinator.placement import HostFacts
from ferry.coordinator.restart_plan import Planned, choose_hosts, new_restart, plan_restarts, restart_id
from ferry.proto.api import HostState, HostView
from ferry.proto.ha import DomainCopy, HaPolicy, HaPriority
from ferry.proto.host import Capacity, HealthState, VmInfo, VmState


def vm(name: str, state: VmState = VmState.RUNNING, definition: str = "d1") -> VmInfo:
    return VmInfo(name=name, uuid=f"uuid-{name}", vcpus=1, memory_mib=1024, state=state, definition=definition)


def copy(name: str, host: str = "hv1", *, local: list[str] | None = None, memory: int = 1024) -> DomainCopy:
    return DomainCopy(vm=name, uuid=f"uuid-{name}", host=host, digest="d1", xml="<domain/>", vcpus=1, memory_mib=memory,
                      local_disks=local or [])


def facts(name: str, **kw) -> HostFacts:
    base = dict(name=name, up=True, health=HealthState.OK, cpus=8, vcpus_used=0, memory_total_mib=8192,
                memory_free_mib=8192, memory_used_mib=0, libvirt_version="11.3.0", qemu_version="10.0.2")
    return HostFacts(**{**base, **kw})


POLICIES = {"db": HaPriority.HIGH, "web": HaPriority.LOW, "cache": HaPriority.MEDIUM}


def policies(table: dict[str, HaPriority]):
    return lambda name: HaPolicy(priority=table.get(name, HaPriority.OFF), vm=name)


def test_ha_vms_are_planned_high_first_and_every_other_vm_is_said_with_why():
    vms = [vm("web"), vm("db"), vm("cache"), vm("scratch"), vm("stopped", VmState.SHUTOFF), vm("local"), vm("moved"),
           vm("nocopy")]
    policy = policies(dict(POLICIES, local=HaPriority.HIGH, moved=HaPriority.HIGH, nocopy=HaPriority.HIGH))
    copies = {c.vm: c for c in [copy("web"), copy("db"), copy("cache"), copy("local", local=["/var/lib/ferry/images/l.qcow2"]),
                                copy("moved")]}
    planned, skipped = plan_restarts("hv1", vms, policy, copies.get, lambda name: ["hv2"] if name == "moved" else ["hv1"])
    assert [(p.vm, p.priority) for p in planned] == [("db", "high"), ("cache", "medium"), ("web", "low")]
    reasons = {s.vm: s.reason for s in skipped}
    assert set(reasons) == {"scratch", "local", "moved", "nocopy"}  # a shut-off VM was not running: nothing to say
    assert reasons["scratch"].startswith("its HA priority is off")
    assert reasons["local"] == "its disks /var/lib/ferry/images/l.qcow2 were on hv1's own storage, which died with it"
    assert reasons["moved"] == "it runs on hv2"
    assert reasons["nocopy"] == "no copy of its definition was kept before hv1 died"


def test_a_restart_has_the_same_id_for_the_same_fence_whoever_plans_it():
    assert restart_id("hv1", 100.5, "db") == restart_id("hv1", 100.5, "db")
    assert restart_id("hv1", 100.5, "db") != restart_id("hv1", 200.0, "db")
    assert restart_id("hv1", 100.5, "db").startswith("r") and len(restart_id("hv1", 100.5, "db")) == 21


def queued(*names: str, memory: int = 1024):
    found = []
    for i, name in enumerate(names):
        planned = Planned(name, POLICIES.get(name, HaPriority.LOW), copy(name, memory=memory))
        restart = new_restart(planned, "hv1", fenced_at=1.0, lost_at=0.5, fenced_by="fence_lab", now=10.0 + i)
        found.append((restart, planned.copy))
    return found


def test_restarts_are_placed_in_priority_order_each_taking_its_room_before_the_next():
    # Room for two 3 GiB VMs on hv2 and one on hv3: the third goes where room is left, not where it was.
    pairs = queued("web", "db", "cache", memory=3072)
    hosts = [facts("hv1", up=False), facts("hv2", memory_total_mib=7168, memory_free_mib=7168),
             facts("hv3", memory_total_mib=4096, memory_free_mib=4096)]
    chosen = {c.restart_id: c for c in choose_hosts(pairs, hosts, {}, per_host=4, at_once=10)}
    by_vm = {r.vm: chosen[r.id] for r, _c in pairs}
    assert by_vm["db"].dests[0] == "hv2" and by_vm["cache"].dests[0] in ("hv2", "hv3")
    firsts = [by_vm[v].dests[0] for v in ("db", "cache", "web") if by_vm[v].dests]
    assert sorted(firsts) == ["hv2", "hv2", "hv3"]


def test_restarts_wait_for_the_limits_and_say_which():
    pairs = queued("db", "cache", "web")
    hosts = [facts("hv2"), facts("hv3")]
    chosen = {c.restart_id: c for c in choose_hosts(pairs, hosts, {"hv2": 1}, per_host=1, at_once=2)}
    by_vm = {r.vm: chosen[r.id] for r, _c in pairs}
    assert by_vm["db"].dests == ["hv3"]
    assert by_vm["cache"].dests == [] and by_vm["cache"].reason == "2 restarts are under way; at most 2 at once"
    full = choose_hosts(queued("db"), hosts, {"hv2": 1, "hv3": 1}, per_host=1, at_once=10)
    assert full[0].reason == "no host can take db now: hv2, hv3 already start 1 restarted VMs each"
    none = choose_hosts(queued("db", memory=99999), hosts, {}, per_host=1, at_once=10)
    assert none[0].dests == [] and "hv2 has 8192 MiB free for VMs" in none[0].reason


def test_a_host_already_tried_is_not_chosen_again():
    (restart, kept), = queued("db")
    restart = restart.__class__(**{**{f: getattr(restart, f) for f in restart.__struct_fields__}, "candidates_tried": ["hv2"]})
    assert choose_hosts([(restart, kept)], [facts("hv2"), facts("hv3")], {}, per_host=4, at_once=4)[0].dests == ["hv3"]


def view(host: str, vms: list[VmInfo], state: HostState = HostState.UP) -> HostView:
    return HostView(host=host, state=state, health=HealthState.OK, last_seen_age=0.0,
                    capacity=Capacity(cpus=8, memory_total_mib=8192, memory_free_mib=8192), vms=vms)


def test_a_definition_is_fetched_only_when_its_digest_or_host_changed():
    held = {"db": copy("db"), "web": copy("web", host="hv9")}
    views = [view("hv1", [vm("db"), vm("web"), vm("new"), vm("off", VmState.SHUTOFF), vm("transient", definition="")]),
             view("hv5", [vm("gone")], HostState.LOST)]
    assert stale(views, held.get) == [("hv1", "web"), ("hv1", "new")]
    changed = [view("hv1", [vm("db", definition="d2")])]
    assert stale(changed, held.get) == [("hv1", "db")]


def test_a_copy_is_forgotten_when_no_host_reports_its_vm_but_kept_while_its_host_is_lost():
    copies = {"k-db": copy("db", host="hv1"), "k-old": copy("old", host="hv1"), "k-dead": copy("dead", host="hv5")}
    reported = {"db": ["hv1"]}
    assert forgotten(copies, lambda name: reported.get(name, []), known_hosts={"hv1"}) == ["k-old"]
