"""Draining a host: the plan, and each step of the drain after it. Pure.

`plan` places every VM of the host, biggest first, and counts what each
placed VM takes before placing the next, so the plan as a whole fits (not
just each VM alone). `step` is the drain's reconciler: from the drain record,
the sessions it started and what the host reports now, it decides which
sessions to start, which VMs to retry elsewhere and when to give up.
"""

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import msgspec

from ferry.coordinator.placement import HostFacts, PlacementRules, VmDemand, rank
from ferry.proto.drain import Drain, DrainItem, DrainState, ItemState
from ferry.proto.events import CoordinatorEvent, DrainFinished, DrainGaveUp, DrainRetry
from ferry.proto.session import Session, SessionCode, SessionState


@dataclass(frozen=True)
class PlannedMove:
    vm: str
    dest: str | None
    reason: str = ""


def plan(vms: Iterable[VmDemand], hosts: Iterable[HostFacts], rules: PlacementRules = PlacementRules()) -> list[PlannedMove]:
    facts = {h.name: h for h in hosts}
    moves = []
    # Biggest first: the large VMs need the hosts with the most room, and the
    # small ones fill in what is left.
    for vm in sorted(vms, key=lambda v: (-v.memory_mib, -v.vcpus, v.name)):
        ranking = rank(vm, list(facts.values()), rules)
        if ranking.best is None:
            why = "; ".join(f"{r.host}: {r.reason}" for r in ranking.rejections if r.code != "same_host")
            moves.append(PlannedMove(vm.name, None, f"no host can take {vm.name}: {why or 'no other host reports'}"))
            continue
        chosen = facts[ranking.best]
        facts[chosen.name] = chosen.holding(vm.vcpus, vm.memory_mib)
        moves.append(PlannedMove(vm.name, chosen.name))
    return moves


@dataclass(frozen=True)
class StartSession:
    vm: str
    # The planned destination, preferred when it can still take the VM.
    hint: str | None
    avoid: list[str]
    attempt: int


@dataclass
class Step:
    drain: Drain
    start: list[StartSession] = field(default_factory=list)
    events: list[CoordinatorEvent] = field(default_factory=list)


def step(
    drain: Drain,
    sessions: Mapping[str, Session],
    vms_on_host: Mapping[str, tuple[int, int]] | None,
    now: float,
    *,
    retry_delay: float,
    incoming: Collection[str] = (),
) -> Step:
    """One pass over a running drain.

    `sessions`: the drain's sessions by id, as stored. `vms_on_host`: the VMs the
    host reports running, name -> (vcpus, memory MiB), or None when the host is
    lost (its VMs cannot be live-migrated: the drain gives them up). `incoming`:
    VMs still migrating to the host (admitted before it was marked): the drain
    is not done until they have arrived and been moved on.
    """
    if drain.state != DrainState.RUNNING:
        return Step(drain)
    out = Step(drain)
    items = []
    known = {item.vm for item in drain.items}
    for item in drain.items:
        items.append(_step_item(drain, item, sessions, vms_on_host, now, retry_delay, out))
    # VMs that arrived on the host after the drain began are drained too.
    for name, (vcpus, memory) in sorted((vms_on_host or {}).items()):
        if name not in known:
            item = DrainItem(vm=name, vcpus=vcpus, memory_mib=memory, reason="appeared on the host during the drain")
            items.append(_step_item(drain, item, sessions, vms_on_host, now, retry_delay, out))
    updated = msgspec.structs.replace(drain, items=items, updated_at=now)
    if all(i.state.final for i in items) and not (incoming and vms_on_host is not None):
        counts = {state: sum(1 for i in items if i.state == state) for state in ItemState}
        updated = msgspec.structs.replace(updated, state=DrainState.DONE, finished_at=now)
        out.events.append(
            DrainFinished(
                host=drain.host,
                moved=counts[ItemState.MOVED],
                gave_up=counts[ItemState.GAVE_UP],
                gone=counts[ItemState.GONE],
            )
        )
    out.drain = updated
    return out


def _step_item(
    drain: Drain,
    item: DrainItem,
    sessions: Mapping[str, Session],
    vms_on_host: Mapping[str, tuple[int, int]] | None,
    now: float,
    retry_delay: float,
    out: Step,
) -> DrainItem:
    if item.state.final:
        return item
    session = sessions.get(item.session_id) if item.session_id else None
    if session is not None and session.state == SessionState.FAILED and session.code == SessionCode.NOT_CONFIRMED:
        # Nobody could tell where the VM runs: no new attempt until a later look
        # settles the session (its VM stays claimed meanwhile).
        return msgspec.structs.replace(item, state=ItemState.MOVING, reason=f"not confirmed yet: {session.reason}")
    if session is not None and not session.state.terminal:
        state = ItemState.QUEUED if session.state == SessionState.QUEUED else ItemState.MOVING
        return msgspec.structs.replace(item, state=state, dest=session.dest or item.dest)
    if session is not None and session.state == SessionState.COMPLETED:
        return msgspec.structs.replace(item, state=ItemState.MOVED, dest=session.dest, reason="")
    if vms_on_host is None:
        reason = f"{drain.host} is lost: its VMs cannot be live-migrated"
        out.events.append(DrainGaveUp(host=drain.host, vm=item.vm, attempts=item.attempts, reason=reason))
        return msgspec.structs.replace(item, state=ItemState.GAVE_UP, reason=reason)
    if session is not None:
        # The attempt failed or was cancelled.
        if session.state == SessionState.CANCELLED and session.code == SessionCode.CANCELLED:
            reason = f"session {session.id} was cancelled: {session.reason}"
            out.events.append(DrainGaveUp(host=drain.host, vm=item.vm, attempts=item.attempts, reason=reason))
            return msgspec.structs.replace(item, state=ItemState.GAVE_UP, session_id=None, reason=reason)
        failed_on = [*item.failed_on, session.dest] if session.dest and session.dest not in item.failed_on else item.failed_on
        reason = f"{session.code}: {session.reason}"
        if item.attempts >= drain.max_attempts:
            why = f"gave up after {item.attempts} attempts; last: {reason}"
            out.events.append(DrainGaveUp(host=drain.host, vm=item.vm, attempts=item.attempts, reason=why))
            return msgspec.structs.replace(
                item, state=ItemState.GAVE_UP, session_id=None, failed_on=failed_on, reason=why
            )
        out.events.append(
            DrainRetry(host=drain.host, vm=item.vm, attempt=item.attempts + 1, failed_on=session.dest, reason=reason)
        )
        return msgspec.structs.replace(
            item,
            state=ItemState.RETRYING,
            session_id=None,
            dest=None,
            failed_on=failed_on,
            reason=reason,
            retry_at=now + retry_delay * item.attempts,
        )
    if item.vm not in vms_on_host:
        return msgspec.structs.replace(item, state=ItemState.GONE, reason=f"{item.vm} no longer runs on {drain.host}")
    if item.session_id is not None:
        # The session record vanished: start over, it counts as an attempt made.
        item = msgspec.structs.replace(item, session_id=None, state=ItemState.PLANNED)
    if item.attempts >= drain.max_attempts:
        why = f"gave up after {item.attempts} attempts; last: {item.reason}"
        out.events.append(DrainGaveUp(host=drain.host, vm=item.vm, attempts=item.attempts, reason=why))
        return msgspec.structs.replace(item, state=ItemState.GAVE_UP, reason=why)
    if now < item.retry_at:
        return item
    out.start.append(StartSession(vm=item.vm, hint=item.dest, avoid=list(item.failed_on), attempt=item.attempts + 1))
    return item


def started(item: DrainItem, session: Session) -> DrainItem:
    """The item once a session for it exists."""
    return msgspec.structs.replace(
        item, state=ItemState.QUEUED, session_id=session.id, attempts=item.attempts + 1, dest=session.dest or item.dest
    )


def not_started(item: DrainItem, reason: str, now: float, retry_delay: float, *, counts: bool = False) -> DrainItem:
    """A session could not even be created: try again later. It `counts` as an
    attempt unless the cause is someone else's (another session moving the VM),
    so a VM that can never start a session is given up like one that fails."""
    return msgspec.structs.replace(
        item, reason=reason, retry_at=now + retry_delay, attempts=item.attempts + (1 if counts else 0)
    )


def new_drain(
    host: str,
    moves: list[PlannedMove],
    sizes: Mapping[str, tuple[int, int]],
    now: float,
    *,
    reason: str,
    automatic: bool,
    priority: int,
    max_attempts: int,
    policy: str = "default",
) -> Drain:
    items = [
        DrainItem(
            vm=m.vm,
            dest=m.dest,
            reason=m.reason,
            vcpus=sizes.get(m.vm, (0, 0))[0],
            memory_mib=sizes.get(m.vm, (0, 0))[1],
        )
        for m in moves
    ]
    return Drain(
        host=host,
        state=DrainState.RUNNING,
        started_at=now,
        updated_at=now,
        reason=reason,
        automatic=automatic,
        priority=priority,
        max_attempts=max_attempts,
        policy=policy,
        items=items,
    )
