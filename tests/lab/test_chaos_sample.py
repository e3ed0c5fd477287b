"""A small sample of `make chaos` (bench/chaos.py): two rounds per fault,
kill -9 of the leading coordinator, both coordinators, a source agent, a
destination agent and one of the three nats-servers while real guests move
(the second round of each drains a host). Nothing may be lost, doubled, stuck
or left behind."""

from __future__ import annotations

import random

import pytest

from bench.chaos import FAULTS, GUEST_DIRTY_MB, LOCAL_DISK_MIB, Chaos, RoundResult, round_line, run_rounds
from ferry.lab.lab import Lab

pytestmark = pytest.mark.lab

ROUNDS_PER_FAULT = 2


async def test_a_sample_of_chaos_loses_doubles_and_strands_nothing(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    guests = [
        guest_factory(host="hv1", dirty_mb=GUEST_DIRTY_MB, disk="local", disk_size_mib=LOCAL_DISK_MIB, wait_ticks=1),
        guest_factory(host="hv2", dirty_mb=GUEST_DIRTY_MB, wait_ticks=1),
        guest_factory(host="hv3", dirty_mb=GUEST_DIRTY_MB, wait_ticks=1),
    ]
    seed = random.randrange(1 << 30)
    chaos = Chaos(lab, guests, random.Random(seed), local_disk=guests[:1], drain_every=ROUNDS_PER_FAULT)
    seen: list[RoundResult] = []
    results = await run_rounds(chaos, FAULTS, ROUNDS_PER_FAULT, seen.append)
    report = "\n".join(f"{round_line(r)}\n" + "".join(f"      {p}\n" for p in r.problems) for r in results)
    assert len(results) == len(FAULTS) * ROUNDS_PER_FAULT
    assert all(r.sessions for r in results), f"every round moved something (seed {seed}):\n{report}"
    assert all(r.clean for r in results), f"seed {seed}:\n{report}"
