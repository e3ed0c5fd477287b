"""The source agent judges a migrate request's transport before libvirt sees it
(agent/peer_rules.py), and its result says what it asked libvirt for."""

import time

import msgspec
import pytest

from ferry.agent.config import AgentConfig, MigrationSettings
from ferry.agent.journal import Journal, JournalEntry
from ferry.agent.source import Source
from ferry.proto.agent import JobRole, MigrateRequest, SessionResult
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.host import VmState
from ferry.proto.session import MigrateOptions
from tests.support.fake_hypervisor import FakeHypervisor
from tests.support.waiting import eventually

HOST = "hv1"
SID = "sess01"
TLS_PEER = "qemu+tls://hv2/system"


class Moving(FakeHypervisor):
    """A hypervisor whose migrations succeed: the domain leaves (UNDEFINE_SOURCE)."""

    async def migrate(self, name, plan):
        self.migrated.append((name, plan))
        self.vms.pop(name, None)


class Results:
    def __init__(self) -> None:
        self.results: list[SessionResult] = []
        self._decoder = msgspec.json.Decoder(SessionResult)

    async def __call__(self, subject: str, payload: bytes) -> None:
        if b'"type":"result"' in payload:
            self.results.append(self._decoder.decode(payload))


def config(tmp_path, **migration) -> AgentConfig:
    return AgentConfig(
        host=HOST, state_dir=str(tmp_path / "state"), migration=MigrationSettings(progress_interval=0.01, **migration)
    )


def request(*, tls: bool = True, peer_uri: str = TLS_PEER) -> MigrateRequest:
    return MigrateRequest(session_id=SID, vm="web", dest="hv2", peer_uri=peer_uri, options=MigrateOptions(tls=tls))


async def source(tmp_path, hv, **migration) -> tuple[Source, Journal, Results]:
    settings = config(tmp_path, **migration)
    journal = Journal(settings.state_dir)
    await journal.open()
    published = Results()
    return Source(settings, hv, published, journal), journal, published


async def the_result(published: Results) -> SessionResult:
    async def one():
        return published.results[0] if published.results else None

    return await eventually(one, timeout=5, every=0.01, what="a result")


@pytest.mark.parametrize(
    "sent, code",
    [
        (request(tls=False), ErrorCode.TLS_REQUIRED),
        (request(peer_uri="qemu+tcp://hv2/system"), ErrorCode.PEER_REFUSED),
        (request(peer_uri="qemu+tls://hv2/system?no_verify=1"), ErrorCode.PEER_REFUSED),
    ],
)
async def test_a_default_agent_refuses_before_anything_is_journaled_or_started(tmp_path, sent, code):
    hv = Moving(vms={"web": VmState.RUNNING})
    src, journal, published = await source(tmp_path, hv)
    with pytest.raises(FerryError) as refused:
        await src.migrate(sent)
    assert refused.value.code == code
    assert hv.migrated == [] and await journal.load() == [] and published.results == []
    assert src.in_flight == 0


async def test_a_tls_migration_reports_tls(tmp_path):
    hv = Moving(vms={"web": VmState.RUNNING})
    src, _, published = await source(tmp_path, hv)
    await src.migrate(request())
    result = await the_result(published)
    assert result.ok and result.encryption == "tls"
    assert [plan.tls for _, plan in hv.migrated] == [True]


async def test_an_agent_that_allows_plain_migrations_runs_them_and_says_so(tmp_path):
    hv = Moving(vms={"web": VmState.RUNNING})
    src, _, published = await source(tmp_path, hv, require_tls=False, allowed_peer_schemes=["qemu+tls", "qemu+tcp"])
    await src.migrate(request(tls=False, peer_uri="qemu+tcp://hv2/system"))
    result = await the_result(published)
    assert result.ok and result.encryption == "none"
    (_, plan), = hv.migrated
    assert not plan.tls and plan.peer_uri == "qemu+tcp://hv2/system"


async def test_a_failed_migration_still_says_what_it_asked_for(tmp_path):
    src, _, published = await source(tmp_path, FakeHypervisor(vms={"web": VmState.RUNNING}))
    await src.migrate(request())
    result = await the_result(published)
    assert not result.ok and result.encryption == "tls"


async def test_a_session_journaled_under_other_rules_is_answered_not_refused(tmp_path):
    # Started while the agent allowed plain streams; the agent restarted with the default.
    earlier = request(tls=False)
    done = SessionResult(session_id=SID, vm="web", host=HOST, at=time.time() - 10, ok=True, encryption="none")
    src, journal, _ = await source(tmp_path, FakeHypervisor())
    await journal.write(
        JournalEntry(session_id=SID, vm="web", role=JobRole.SOURCE, request=earlier, started_at=time.time() - 20, result=done)
    )
    await src.recover(await journal.load())
    state = await src.migrate(earlier)
    assert state.result == done


async def test_a_job_followed_after_a_restart_reports_the_journaled_requests_encryption(tmp_path):
    src, journal, published = await source(tmp_path, FakeHypervisor(), require_tls=False)
    await journal.write(
        JournalEntry(session_id=SID, vm="web", role=JobRole.SOURCE, request=request(tls=False), started_at=time.time() - 5)
    )
    # libvirt no longer runs the job and the VM is gone: it moved while no agent watched.
    await src.recover(await journal.load())
    result = await the_result(published)
    assert result.ok and result.encryption == "none"
