import os
import stat

import msgspec
import pytest
from structlog.testing import capture_logs

from ferry.agent import journal as journal_module
from ferry.agent.journal import Journal, JournalEntry, is_stale
from ferry.proto.agent import JobRole, MigrateRequest, SessionResult

NOW = 1_000_000.0


def source_entry(session_id: str = "s1abcd", result_at: float | None = None) -> JournalEntry:
    request = MigrateRequest(session_id=session_id, vm="web", dest="hv2", peer_uri="qemu+tls://hv2/system")
    result = None
    if result_at is not None:
        result = SessionResult(session_id=session_id, vm="web", host="hv1", at=result_at, ok=True)
    return JournalEntry(
        session_id=session_id, vm="web", role=JobRole.SOURCE, request=request,
        copied_paths=["/img/web.qcow2"], started_at=NOW - 10, result=result,
    )


@pytest.fixture
async def journal(tmp_path):
    j = Journal(tmp_path / "state", clock=lambda: NOW)
    await j.open()
    return j


async def test_open_makes_owner_only_folders(tmp_path, journal):
    for folder in (tmp_path / "state", tmp_path / "state" / "sessions"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


async def test_an_entry_is_written_loaded_replaced_and_removed(journal):
    await journal.write(source_entry())
    path = journal.folder / "s1abcd.json"
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    (loaded,) = await journal.load()
    assert loaded == msgspec.structs.replace(source_entry(), updated_at=NOW)
    await journal.write(source_entry(result_at=NOW))
    (again,) = await journal.load()
    assert again.result is not None and again.result.ok
    assert sorted(p.name for p in journal.folder.iterdir()) == ["s1abcd.json"]  # no temp file left
    assert await journal.remove("s1abcd") is True
    assert await journal.remove("s1abcd") is False
    assert await journal.load() == []


async def test_a_failed_write_keeps_the_old_entry_and_leaves_no_temp_file(journal, monkeypatch):
    await journal.write(source_entry())

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module.os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        await journal.write(source_entry(result_at=NOW))
    monkeypatch.undo()
    (kept,) = await journal.load()
    assert kept.result is None
    assert [p.name for p in journal.folder.iterdir()] == ["s1abcd.json"]


async def test_a_bad_file_is_moved_aside_with_a_warning(journal):
    await journal.write(source_entry())
    (journal.folder / "broken1.json").write_text("{not json")
    (journal.folder / "other1.json").write_bytes((journal.folder / "s1abcd.json").read_bytes())  # wrong name
    with capture_logs() as logs:
        entries = await journal.load()
    assert [e.session_id for e in entries] == ["s1abcd"]
    names = sorted(p.name for p in journal.folder.iterdir())
    assert names == ["broken1.json.bad", "other1.json.bad", "s1abcd.json"]
    warnings = [log for log in logs if log["event"] == "journal_entry_unreadable"]
    assert [w["file"] for w in warnings] == ["broken1.json", "other1.json"]
    assert all(w["log_level"] == "warning" and "moved aside" in w["reason"] for w in warnings)
    assert await journal.load() == entries  # .bad files are left alone


async def test_a_leftover_temp_file_is_cleared(journal):
    await journal.write(source_entry())
    leftover = journal.folder / ".s1abcd.json.x1y2.tmp"
    leftover.write_text("{half")
    assert len(await journal.load()) == 1
    assert not leftover.exists()


async def test_no_folder_yet_means_no_entries(tmp_path):
    assert await Journal(tmp_path / "never").load() == []


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "a.b", "x" * 65, "s1\n", ".."])
async def test_an_unsafe_session_id_never_becomes_a_path(journal, bad):
    with pytest.raises(ValueError, match="session id"):
        journal.path(bad)
    with pytest.raises(ValueError):
        await journal.write(JournalEntry(session_id=bad, vm="web", role=JobRole.SOURCE))
    with pytest.raises(ValueError):
        await journal.remove(bad)
    assert list(journal.folder.iterdir()) == []


async def test_finished_source_entries_are_pruned_after_their_time(journal):
    keep = 3600.0
    running = source_entry("run001")
    fresh = source_entry("new001", result_at=NOW - 10)
    old = source_entry("old001", result_at=NOW - keep - 1)
    destination = JournalEntry(session_id="dst001", vm="db", role=JobRole.DESTINATION, created_disks=["/img/db"])
    for entry in (running, fresh, old, destination):
        await journal.write(entry)
    assert [is_stale(e, NOW, keep) for e in (running, fresh, old, destination)] == [False, False, True, False]
    kept = await journal.prune(await journal.load(), now=NOW, keep_seconds=keep)
    assert sorted(e.session_id for e in kept) == ["dst001", "new001", "run001"]
    assert sorted(p.name for p in journal.folder.iterdir()) == ["dst001.json", "new001.json", "run001.json"]
    assert not os.path.exists(journal.folder / "old001.json")
