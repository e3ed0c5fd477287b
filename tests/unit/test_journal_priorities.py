"""runtime/logs.py: on the journal, each line starts with its syslog priority."""

import json
import os

import pytest
import structlog

from ferry.runtime import logs


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        ("debug", "<7>"),
        ("info", "<6>"),
        ("warning", "<4>"),
        ("warn", "<4>"),
        ("error", "<3>"),
        ("exception", "<3>"),
        ("critical", "<2>"),
        ("ERROR", "<3>"),
        ("something-else", "<6>"),
    ],
)
def test_levels_map_to_syslog_priorities(level, prefix):
    assert logs.priority_prefix(level) == prefix


@pytest.mark.parametrize(
    ("journal_stream", "stream_id", "attached"),
    [
        (None, (8, 1234), False),
        ("", (8, 1234), False),
        ("8:1234", (8, 1234), True),
        # A child whose stderr was redirected inherits the variable but not the stream.
        ("8:1234", (8, 999), False),
        ("8:1234", None, False),
        ("garbage", (8, 1234), False),
    ],
)
def test_the_journal_is_the_stream_systemd_named(journal_stream, stream_id, attached):
    assert logs.on_journal(journal_stream, stream_id) is attached


def test_stream_id_is_device_and_inode(tmp_path):
    with open(tmp_path / "log", "w") as f:
        st = os.fstat(f.fileno())
        assert logs.stream_id(f) == (st.st_dev, st.st_ino)


def test_renderer_prefixes_the_rendered_line():
    render = logs.WithPriority(structlog.processors.JSONRenderer())
    line = render(None, "error", {"event": "term_failed", "level": "error"})
    assert line.startswith("<3>{")
    assert json.loads(line[3:]) == {"event": "term_failed", "level": "error"}


@pytest.fixture
def restore_structlog():
    yield
    structlog.reset_defaults()


@pytest.mark.parametrize(("journal", "prefixes"), [(True, ["<6>", "<4>", "<3>", "<2>"]), (False, ["{", "{", "{", "{"])])
def test_configured_logs_carry_priorities_only_on_the_journal(capsys, restore_structlog, journal, prefixes):
    logs.configure("debug", json=True, journal=journal)
    log = structlog.get_logger()
    log.info("a")
    log.warning("b")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("c")
    log.critical("d")
    lines = capsys.readouterr().err.splitlines()
    assert [line[: len(p)] for line, p in zip(lines, prefixes, strict=True)] == prefixes
    # The traceback stays inside the JSON line: journald sees one entry at one priority.
    assert "boom" in lines[2]
