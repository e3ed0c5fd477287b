"""Convergence through real processes and a real nats-server on the simulated
backend (whose guests dirty memory at a set rate): predictions for a migration
and a drain, and policy steps recorded in the session. The lab proves the
policies against real guests (tests/lab/test_convergence.py)."""

import msgspec
import pytest

from ferry.proto.api import MigrateRequest
from ferry.proto.convergence import ActionKind
from ferry.proto.drain import DrainReply
from ferry.proto.errors import FerryError
from ferry.proto.session import MigrateOptions, SessionState
from tests.support.cluster import connect_client, wait_hosts_up
from tests.support.ferry_cli import ferry
from tests.support.processes import coordinator_toml, simulated_agent_toml
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def cluster(daemons, nats_server, tmp_path, vms):
    daemons.start("coordinator", "ferry-coordinator", coordinator_toml(nats_server.url))
    daemons.start("src", "ferry-agent", simulated_agent_toml("src", nats_server.url, tmp_path, vms=vms))
    daemons.start("dst", "ferry-agent", simulated_agent_toml("dst", nats_server.url, tmp_path))


async def test_a_dry_run_predicts_from_the_dirty_rate_measured_now(daemons, nats_server, tmp_path):
    # (name, vcpus, MiB, CPU model, MiB/s dirtied)
    cluster(daemons, nats_server, tmp_path, [("busy", 1, 512, "", 512), ("quiet", 1, 512, "", 0)])
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst"])
        capped = MigrateOptions(bandwidth_mib=256)
        busy = await client.plan(MigrateRequest(vm="busy", options=capped))
        quiet = await client.plan(MigrateRequest(vm="quiet", options=capped))
        assert (busy.source, busy.dest, quiet.dest) == ("src", "dst", "dst")
        assert busy.prediction is not None and not busy.prediction.converges
        assert busy.prediction.dirty_rate_bps == 512 * MIB and busy.prediction.bandwidth_bps == 256 * MIB
        assert busy.prediction.steps_needed == ["raise max downtime", "auto-converge"]
        assert quiet.prediction is not None and quiet.prediction.converges
        assert quiet.prediction.expected_total_ms == 2000
        # Nothing moved, nothing is queued.
        assert await client.sessions() == []

        with pytest.raises(FerryError) as unknown:
            await client.plan(MigrateRequest(vm="busy", options=MigrateOptions(policy="hurry")))
        assert unknown.value.code == "bad_request" and "known: default, gentle, insist, plain" in unknown.value.message

    shown = ferry(nats_server.url, "migrate", "busy", "--bandwidth", "256", "--dry-run")
    assert shown.code == 0, shown.stderr
    assert "dry run: busy would move src -> dst (policy default); nothing moves" in shown.stdout
    assert "does not converge with plain pre-copy (dirties 512.0 MiB/s, copies 256.0 MiB/s)" in shown.stdout

    drain = ferry(nats_server.url, "drain", "src", "--dry-run", "--policy", "insist", "--json")
    assert drain.code == 0, drain.stderr
    reply = msgspec.json.decode(drain.stdout, type=DrainReply)
    assert reply.dry_run and reply.drain.policy == "insist"
    predicted = {i.vm: i.prediction for i in reply.drain.items}
    # No cap on a drain: the prediction assumes the link (1 GiB/s), where both converge.
    assert predicted["busy"] is not None and predicted["quiet"] is not None
    assert predicted["busy"].bandwidth_bps == 1024 * MIB and predicted["busy"].converges


async def test_a_session_records_its_prediction_and_every_policy_step(daemons, nats_server, tmp_path):
    # Dirtying 64 MiB/s at 256 MiB/s: passes shrink to a quarter each time and the
    # downtime steps let it finish.
    cluster(daemons, nats_server, tmp_path, [("g1", 1, 1024, "", 64)])
    async with await connect_client(nats_server) as client:
        await wait_hosts_up(client, ["src", "dst"])
        session = await client.migrate(MigrateRequest(vm="g1", options=MigrateOptions(bandwidth_mib=256)))
        # While it runs the coordinator gives a percent that never runs backwards and an ETA with a range.
        seen: list[float] = []

        async def estimated():
            live = await client.session(session.id)
            p = live.progress
            if p is not None and p.eta_low is not None and not live.state.terminal:
                seen.append(p.percent)
                assert p.eta_seconds is None or p.eta_low <= p.eta_seconds
            return live if len(seen) >= 3 or live.state.terminal else None

        await eventually(estimated, timeout=30, what="progress with an ETA")
        assert seen and seen == sorted(seen) and 0 < seen[-1] < 100, seen
        final = await session_end(client, session.id)
        assert final.state == SessionState.COMPLETED, final.reason
        assert final.prediction is not None and final.prediction.converges
        assert final.prediction.dirty_rate_bps == 64 * MIB
        steps = [a for a in final.steering if a.kind == ActionKind.SET_DOWNTIME]
        assert steps and all(a.sample is not None and a.sample.iteration >= 2 for a in steps)
        assert steps[0].reason.startswith("iteration 2: max downtime 50 -> 100 ms")
    shown = ferry(nats_server.url, "session", session.id)
    assert "predicted: converges with plain pre-copy" in shown.stdout
    assert "policy set_downtime: iteration 2: max downtime 50 -> 100 ms" in shown.stdout
