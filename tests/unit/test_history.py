"""History's pure parts: the `--since` parser, which sessions the archiver takes,
how a sessions page and an events page are filled and capped, and which events
a filter keeps."""

import datetime

import msgspec
import pytest

from ferry.cli.events import event_line, parse_since
from ferry.coordinator.archiver import due
from ferry.coordinator.config import CoordinatorConfig, HistorySettings
from ferry.coordinator.event_page import EventPage, host_filter_subjects, hosts_of, stored_event_at, vms_of, wanted
from ferry.coordinator.session_pages import (
    Cursor,
    SessionPage,
    archive_cursor,
    archived_stop,
    hot_cursor,
    hot_in_order,
    matches,
    parse_cursor,
)
from ferry.proto.api import SessionsRequest
from ferry.proto.codec import encode
from ferry.proto.errors import FerryError
from ferry.proto.events import (
    DomainLifecycle,
    DrainRetry,
    DrainStarted,
    HealthChanged,
    HostLost,
    LeaderElected,
    SessionChanged,
    VmPlaced,
)
from ferry.proto.history import EventRecord, EventsRequest
from ferry.proto.host import HealthState
from ferry.proto.session import MigrateOptions, Session, SessionCode, SessionState, Transition

S = SessionState
NOW = 1_800_000_000.0


# ----- --since -----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10m", NOW - 600),
        ("2h", NOW - 7200),
        ("1d", NOW - 86400),
        ("30s", NOW - 30),
        ("1w", NOW - 7 * 86400),
        ("1.5h", NOW - 5400),
        (" 5m ", NOW - 300),
        ("2026-12-01T10:00:00+00:00", datetime.datetime(2026, 12, 1, 10, tzinfo=datetime.timezone.utc).timestamp()),
        ("2026-12-01T10:00:00Z", datetime.datetime(2026, 12, 1, 10, tzinfo=datetime.timezone.utc).timestamp()),
        ("2026-12-01T12:00:00+02:00", datetime.datetime(2026, 12, 1, 10, tzinfo=datetime.timezone.utc).timestamp()),
        ("100000d", 0.0),  # before the epoch: from the oldest kept
    ],
)
def test_since_takes_durations_and_iso_times(text, expected):
    assert parse_since(text, NOW) == pytest.approx(expected)


def test_since_without_a_zone_is_local_time():
    local = datetime.datetime(2026, 12, 1, 10, 0).astimezone().timestamp()
    assert parse_since("2026-12-01T10:00", NOW) == local
    assert parse_since("2026-12-01", NOW) == datetime.datetime(2026, 12, 1).astimezone().timestamp()


@pytest.mark.parametrize("text", ["", "10", "ten minutes", "10 minutes", "-5m", "5y", "2026-13-01", "m", "1e3s"])
def test_since_refuses_anything_else_with_a_reason(text):
    with pytest.raises(FerryError) as refused:
        parse_since(text, NOW)
    assert refused.value.code == "bad_request"
    assert "--since" in refused.value.message and "10m" in refused.value.message


# ----- the archiver's choice -----


def session(
    id_: str, state: SessionState = S.COMPLETED, *, updated_at: float = NOW - 7200, vm: str = "g1",
    created_at: float | None = None, code: str = "", history: int = 0,
) -> Session:
    return Session(
        id=id_, vm=vm, source="hv1", options=MigrateOptions(), state=state,
        created_at=updated_at - 10 if created_at is None else created_at, updated_at=updated_at, code=code,
        history=[Transition(at=updated_at, state=state, reason="x" * 200) for _ in range(history)],
    )


@pytest.mark.parametrize(
    ("stored", "holding", "archived"),
    [
        # Ended two hours ago, nobody holds it: it goes.
        ([session("aaaaaa01")], set(), ["aaaaaa01"]),
        # Every terminal state goes.
        ([session("aaaaaa01", S.FAILED, code="declined"), session("aaaaaa02", S.CANCELLED)], set(), ["aaaaaa01", "aaaaaa02"]),
        # Not ended: stays, however old.
        ([session("aaaaaa01", S.MIGRATING), session("aaaaaa02", S.QUEUED), session("aaaaaa03", S.PREPARING)], set(), []),
        # Ended not knowing where its VM runs: stays, claim or not.
        ([session("aaaaaa01", S.FAILED, code=SessionCode.NOT_CONFIRMED)], set(), []),
        # A claim still names it: stays.
        ([session("aaaaaa01"), session("aaaaaa02")], {"aaaaaa01"}, ["aaaaaa02"]),
        # Ended within keep_finished (an hour): stays; just past it: goes.
        ([session("aaaaaa01", updated_at=NOW - 3599), session("aaaaaa02", updated_at=NOW - 3601)], set(), ["aaaaaa02"]),
        # The longest ended first.
        ([session("aaaaaa01", updated_at=NOW - 4000), session("aaaaaa02", updated_at=NOW - 9000)], set(), ["aaaaaa02", "aaaaaa01"]),
    ],
)
def test_the_archiver_takes_only_sessions_long_ended_and_unclaimed(stored, holding, archived):
    chosen = due([(s, 7) for s in stored], holding, NOW, keep_finished=3600)
    assert [s.id for s, _revision in chosen] == archived
    assert all(revision == 7 for _s, revision in chosen)


def test_the_archiver_takes_at_most_so_many_in_one_pass():
    stored = [(session(f"aaaaaa{i:02}", updated_at=NOW - 4000 - i), 1) for i in range(10)]
    assert [s.id for s, _ in due(stored, set(), NOW, 3600, at_most=3)] == ["aaaaaa09", "aaaaaa08", "aaaaaa07"]


# ----- a sessions page -----


@pytest.mark.parametrize(
    ("text", "cursor"),
    [
        ("", Cursor()),
        ("h.1700000000123.aaaaaa01", Cursor(hot=(1700000000123, "aaaaaa01"))),
        ("a.42", Cursor(archive_below=42, archive_only=True)),
    ],
)
def test_page_cursors_read_back(text, cursor):
    assert parse_cursor(text) == cursor


@pytest.mark.parametrize("text", ["x", "a.", "a.-1", "h.12", "h.12.UPPER", "a.1.2", "h.1.aaaaaa01\n"])
def test_a_cursor_not_made_by_a_reply_is_refused(text):
    with pytest.raises(FerryError) as refused:
        parse_cursor(text)
    assert refused.value.code == "bad_request"


def test_cursors_name_what_the_next_page_starts_with():
    s = session("aaaaaa01", created_at=1700000000.1234)
    assert hot_cursor(s) == "h.1700000000123.aaaaaa01"
    assert archive_cursor(43) == "a.43"


@pytest.mark.parametrize(
    ("request_", "kept"),
    [
        (SessionsRequest(), ["aaaaaa01", "aaaaaa02", "aaaaaa03"]),
        (SessionsRequest(vm="web"), ["aaaaaa02"]),
        (SessionsRequest(include_finished=False), ["aaaaaa03"]),
        # Going at or after `since`: updated since then.
        (SessionsRequest(since=NOW - 100), ["aaaaaa02", "aaaaaa03"]),
    ],
)
def test_which_sessions_a_request_matches(request_, kept):
    stored = [
        session("aaaaaa01", updated_at=NOW - 500),
        session("aaaaaa02", updated_at=NOW - 50, vm="web"),
        session("aaaaaa03", S.MIGRATING, updated_at=NOW - 10),
    ]
    assert [s.id for s in stored if matches(s, request_)] == kept


def test_hot_sessions_come_newest_first_and_from_the_cursor_on():
    hot = [session("aaaaaa01", created_at=100), session("aaaaaa03", created_at=300), session("aaaaaa02", created_at=200)]
    assert [s.id for s in hot_in_order(hot, SessionsRequest(), Cursor())] == ["aaaaaa03", "aaaaaa02", "aaaaaa01"]
    assert [s.id for s in hot_in_order(hot, SessionsRequest(), parse_cursor("h.200000.aaaaaa02"))] == ["aaaaaa02", "aaaaaa01"]
    assert hot_in_order(hot, SessionsRequest(), parse_cursor("a.9")) == []


def test_a_page_stops_at_its_limit_and_says_where_the_next_starts():
    page = SessionPage(limit=2)
    assert page.offer(session("aaaaaa03"), "c3") and page.offer(session("aaaaaa02"), "c2")
    assert not page.offer(session("aaaaaa01"), "c1")
    assert page.full and page.next_before == "c1"
    assert [s.id for s in page.sessions()] == ["aaaaaa02", "aaaaaa03"]  # oldest first: the latest at the bottom


def test_a_page_stays_under_its_size_cap_however_big_the_sessions():
    big = [session(f"aaaaaa{i:02}", history=200) for i in range(40)]
    one = len(encode(big[0]))
    assert one > 40_000
    page = SessionPage(limit=50, max_bytes=512 * 1024)
    taken = [s for s in big if page.offer(s, f"cursor-{s.id}")]
    assert 0 < len(taken) < 40 and page.full
    assert page.next_before == f"cursor-{big[len(taken)].id}"
    assert len(encode(page.sessions())) < 512 * 1024


def test_one_session_always_fits_a_page():
    page = SessionPage(limit=5, max_bytes=1000)
    assert page.offer(session("aaaaaa01", history=50), "c1")
    assert not page.offer(session("aaaaaa02"), "c2") and page.next_before == "c2"


def test_a_session_seen_once_is_not_listed_twice():
    page = SessionPage(limit=5)
    assert page.offer(session("aaaaaa01"), "c1") and page.offer(session("aaaaaa01"), "c1")
    assert [s.id for s in page.sessions()] == ["aaaaaa01"]


def test_the_archive_is_read_back_only_to_since():
    assert archived_stop(NOW - 10, SessionsRequest(since=NOW - 5))
    assert not archived_stop(NOW - 10, SessionsRequest(since=NOW - 50))
    assert not archived_stop(NOW - 10, SessionsRequest())


# ----- events -----

LIFECYCLE = DomainLifecycle(host="hv1", vm="web", event="started", at=NOW)
HEALTH = HealthChanged(host="hv2", previous=HealthState.OK, current=HealthState.CRITICAL, at=NOW)
MOVED = SessionChanged(session_id="aaaaaa01", vm="web", state=S.MIGRATING, source="hv1", dest="hv3", at=NOW)
LOST = HostLost(host="hv4", silent_for=9.0, reason="silent", vms=["db", "web"], at=NOW)
RETRY = DrainRetry(host="hv1", vm="db", attempt=2, failed_on="hv5", reason="declined", at=NOW)
ELECTED = LeaderElected(leader="c1", term=3, reason="start", at=NOW)
PLACED = VmPlaced(host="hv1", vm="g1", session_id="aaaaaa02", dest="hv2", at=NOW)


@pytest.mark.parametrize(
    ("event", "hosts", "vms"),
    [
        (LIFECYCLE, {"hv1"}, {"web"}),
        (HEALTH, {"hv2"}, set()),
        (MOVED, {"hv1", "hv3"}, {"web"}),
        (LOST, {"hv4"}, {"db", "web"}),
        (RETRY, {"hv1", "hv5"}, {"db"}),
        (ELECTED, set(), set()),
        (PLACED, {"hv1", "hv2"}, {"g1"}),
        (DrainStarted(host="hv1", reason="operator", automatic=False, vms=3), {"hv1"}, set()),
    ],
)
def test_what_an_event_names(event, hosts, vms):
    assert hosts_of(event) == hosts and vms_of(event) == vms


COORD = "ferry.coordinator.event"


@pytest.mark.parametrize(
    ("event", "subject", "request_", "kept"),
    [
        (MOVED, COORD, EventsRequest(), True),
        (MOVED, COORD, EventsRequest(host="hv3"), True),
        (MOVED, COORD, EventsRequest(host="hv2"), False),
        (MOVED, COORD, EventsRequest(vm="web"), True),
        (MOVED, COORD, EventsRequest(vm="db"), False),
        (MOVED, COORD, EventsRequest(host="hv1", vm="web"), True),
        (ELECTED, COORD, EventsRequest(host="hv1"), False),
        (HEALTH, "ferry.host.hv2.event", EventsRequest(host="hv2"), True),
        # A host's report counts for the host it came from.
        (LIFECYCLE, "ferry.host.hv1.event", EventsRequest(host="hv1"), True),
        (LOST, COORD, EventsRequest(vm="db"), True),
        # Stored before `since`: left out (the servers' time, not the event's claim).
        (MOVED, COORD, EventsRequest(since=NOW + 1), False),
    ],
)
def test_which_events_a_request_keeps(event, subject, request_, kept):
    assert wanted(event, subject, request_, stored_at=NOW) is kept


def test_a_host_filter_reads_only_that_hosts_reports_and_the_coordinators():
    assert host_filter_subjects(None) == ["ferry.coordinator.event", "ferry.host.*.event"]
    assert host_filter_subjects("hv1.example.com") == ["ferry.coordinator.event", "ferry.host.hv1_example_com.event"]


def test_an_event_page_stops_at_its_limit_before_the_message_it_cannot_take():
    page = EventPage(limit=2)
    assert page.offer(10, COORD, MOVED, keep=True)
    assert page.offer(11, COORD, ELECTED, keep=False)  # looked at, not kept
    assert page.offer(12, COORD, MOVED, keep=True)
    assert not page.offer(13, COORD, MOVED, keep=True)
    assert page.full and page.last_seq == 12 and page.scanned == 3
    assert [r.seq for r in page.events] == [10, 12]


def test_an_event_page_stays_under_its_size_cap():
    heavy = HostLost(host="hv4", silent_for=9.0, reason="r" * 5000, vms=[f"vm-{i}" for i in range(500)], at=NOW)
    page = EventPage(limit=10_000, max_bytes=512 * 1024)
    seq = 0
    while page.offer(seq + 1, COORD, heavy, keep=True):
        seq += 1
    assert page.full and page.last_seq == seq and len(page.events) == seq
    assert len(encode(page.events)) < 512 * 1024


def test_unreadable_messages_are_counted_and_passed_over():
    page = EventPage(limit=5)
    assert page.offer(1, "ferry.host.hv1.event", None, keep=False)
    assert page.unreadable == 1 and page.last_seq == 1 and page.events == []


def test_an_event_without_a_time_gets_the_time_it_was_stored():
    old_agent = msgspec.structs.replace(LIFECYCLE, at=0.0)
    assert stored_event_at(old_agent, NOW - 5).at == NOW - 5
    assert stored_event_at(LIFECYCLE, NOW - 5).at == NOW


def test_an_event_line_shows_time_kind_where_and_fields_as_plain_text():
    line = event_line(EventRecord(seq=1, subject=COORD, event=msgspec.structs.replace(LIFECYCLE, event="[red]x\x1b[2J")))
    assert "domain_lifecycle" in line.plain and "hv1/web" in line.plain and "event=[red]x\\x1b[2J" in line.plain
    assert line.spans == []


# ----- settings -----


def test_history_settings_default_and_bounds():
    assert CoordinatorConfig().history == HistorySettings()
    assert HistorySettings().events_max_age == 7 * 86400 and HistorySettings().keep_finished == 3600
    assert HistorySettings().archive_max_age == 90 * 86400
    read = msgspec.toml.decode(b"[history]\nkeep_finished = 1.0\narchive_every = 0.5\n", type=CoordinatorConfig)
    assert read.history.keep_finished == 1.0 and read.history.archive_every == 0.5
    for bad in (b"[history]\nevents_max_age = 1\n", b"[history]\nkeep_finished = -1\n", b"[history]\narchive_every = 0\n"):
        with pytest.raises(msgspec.ValidationError):
            msgspec.toml.decode(bad, type=CoordinatorConfig)
