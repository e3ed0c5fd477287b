"""/metrics in the lab: during a real migration the leader coordinator and the
source agent show its transfer, afterwards the leader has counted it, and both
expositions pass `promtool check metrics`."""

from __future__ import annotations

import pytest

from ferry.lab import configs
from ferry.lab.ferry_services import metrics_urls
from ferry.lab.lab import Lab
from ferry.lab.layout import LabLayout
from ferry.proto.api import MigrateRequest
from ferry.proto.session import MigrateOptions, SessionState
from tests.support.guests import assert_never_restarted, assert_runs_only_on, client_for
from tests.support.prometheus import check_metrics, samples, scrape, value
from tests.support.waiting import eventually, session_end

pytestmark = pytest.mark.lab


def test_each_lab_daemon_has_its_own_metrics_address(tmp_path) -> None:
    layout = LabLayout.build(tmp_path, hosts=3, address_base="127.0.41")
    assert metrics_urls(layout) == {
        "agent:hv1": "http://127.0.41.1:9465/metrics",
        "agent:hv2": "http://127.0.41.2:9465/metrics",
        "agent:hv3": "http://127.0.41.3:9465/metrics",
        "coordinator:c1": "http://127.0.41.201:9464/metrics",
        "coordinator:c2": "http://127.0.41.202:9464/metrics",
    }
    assert 'metrics_address = "127.0.41.2:9465"' in configs.agent_toml(layout.host("hv2"), ["nats://x"])
    assert 'metrics_address = "127.0.41.202:9464"' in configs.coordinator_toml(layout, "c2", ["nats://x"])


async def test_the_leader_and_the_source_agent_show_a_migration_in_their_metrics(lab_with_ferry: Lab, guest_factory) -> None:
    lab = lab_with_ferry
    urls = metrics_urls(lab.layout)
    # 24 MiB of memory kept changing at 8 MiB/s: a copy that runs long enough to be scraped.
    guest = guest_factory(host="hv1", memory_mib=256, dirty_mb=24, wait_ticks=3)

    async def leader() -> str | None:
        leading = [
            name for name in ("c1", "c2")
            if value(samples(await scrape(urls[f"coordinator:{name}"])), "ferry_coordinator_leader", coordinator=name) == 1.0
        ]
        return leading[0] if len(leading) == 1 else None

    leader_url = urls[f"coordinator:{await eventually(leader, timeout=30, what='one coordinator leading')}"]
    agent_url = urls["agent:hv1"]
    succeeded_before = value(samples(await scrape(leader_url)), "ferry_migration_succeeded_total")

    client = await client_for(lab)
    try:
        session = await client.migrate(MigrateRequest(vm=guest, dest="hv2", options=MigrateOptions(bandwidth_mib=8)))
        labels = {"vm": guest, "session": session.id, "source": "hv1", "dest": "hv2"}

        async def transferring(url: str):
            text = await scrape(url)
            found = samples(text)
            return (text, found) if value(found, "ferry_migration_data_processed_bytes", **labels) else None

        async def moving(url: str):
            # libvirt reports a transfer rate from its second look at the job on: the
            # first sample with data processed may still say 0 B/s.
            seen = await transferring(url)
            return seen if seen and (value(seen[1], "ferry_migration_memory_transfer_rate_bytes", **labels) or 0) > 0 else None

        agent_text, on_agent = await eventually(lambda: moving(agent_url), timeout=30, what="the source's gauges")
        leader_text, on_leader = await eventually(lambda: transferring(leader_url), timeout=30, what="the leader's gauges")
        assert value(on_agent, "ferry_migration_memory_transfer_rate_bytes", **labels) > 0
        assert value(on_agent, "ferry_migration_jobs_active", role="source") == 1.0
        assert value(on_agent, "ferry_libvirt_connected") == 1.0 and value(on_agent, "ferry_nats_connected") == 1.0
        assert value(on_leader, "ferry_migrations", phase="migrating") == 1.0
        assert value(on_leader, "ferry_hosts", state="up", health="ok") == 3.0
        for text in (agent_text, leader_text):
            check_metrics(text)

        await client.bandwidth(session.id, 256)
        final = await session_end(client, session.id, timeout=120)
        assert final.state == SessionState.COMPLETED, final.reason
    finally:
        await client.close()

    async def counted():
        found = samples(await scrape(leader_url))
        ended = value(found, "ferry_migration_succeeded_total") == succeeded_before + 1
        return found if ended and value(found, "ferry_migrations", phase="migrating") == 0.0 else None

    after = await eventually(counted, timeout=15, what="the leader counting the session")
    assert value(after, "ferry_migration_downtime_seconds_count") >= 1.0
    assert value(after, "ferry_migration_data_processed_bytes", **labels) is None
    for url in (leader_url, agent_url):
        check_metrics(await scrape(url))
    assert_runs_only_on(lab, guest, "hv2")
    assert_never_restarted(lab, guest)
