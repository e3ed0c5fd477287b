"""`ferry cancel WORD`: a session id or a VM name. The CLI sends the word as what it
may be (cancel_request); the coordinator picks the session (session_to_cancel)."""

import pytest

from ferry.cli.main import cancel_request
from ferry.coordinator.sessions.cancel_target import needs_sessions, session_to_cancel
from ferry.proto.api import CancelRequest
from ferry.proto.errors import FerryError
from ferry.proto.session import MigrateOptions, Session, SessionState

S = SessionState


def session(id_: str, vm: str, state: SessionState) -> Session:
    return Session(id=id_, vm=vm, source="hv1", options=MigrateOptions(), state=state, created_at=1.0, updated_at=1.0)


SESSIONS = [
    session("aaaaaa01", "web-1", S.COMPLETED),
    session("aaaaaa02", "web-1", S.MIGRATING),
    session("aaaaaa03", "db", S.FAILED),
    session("aaaaaa04", "queued-vm", S.QUEUED),
    session("aaaaaa05", "aaaaaa01", S.PREPARING),  # a VM whose name looks like a session id
    session("aaaaaa06", "twice", S.MIGRATING),
    session("aaaaaa07", "twice", S.QUEUED),
]


@pytest.mark.parametrize(
    ("request_", "chosen"),
    [
        (CancelRequest(id="aaaaaa03"), "aaaaaa03"),  # an id alone is taken as it is
        (CancelRequest(id="zzzzzz99"), "zzzzzz99"),  # (cancelling it says not_found)
        (CancelRequest(vm="web-1"), "aaaaaa02"),  # the running one, not the completed one
        (CancelRequest(vm="queued-vm"), "aaaaaa04"),
        (CancelRequest(id="aaaaaa01", vm="aaaaaa01"), "aaaaaa01"),  # a session's id wins over a VM's name
        (CancelRequest(id="bbbbbb01", vm="web-1"), "aaaaaa02"),
    ],
)
def test_the_session_a_cancel_means(request_, chosen):
    assert session_to_cancel(request_, SESSIONS) == chosen


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (CancelRequest(), "bad_request", "a cancel names a session id or a VM"),
        (CancelRequest(vm="db"), "not_found", "no session is moving a VM called db now"),
        (CancelRequest(vm="nobody"), "not_found", "no session is moving a VM called nobody now"),
        (CancelRequest(id="bbbbbb01", vm="bbbbbb01"), "not_found",
         "no session has the id bbbbbb01, and no session is moving a VM called bbbbbb01 now"),
        (CancelRequest(vm="twice"), "conflict", "twice has 2 sessions running (aaaaaa06, aaaaaa07): cancel one by its id"),
    ],
)
def test_a_cancel_that_means_no_one_session_says_why(request_, code, message):
    with pytest.raises(FerryError) as refused:
        session_to_cancel(request_, SESSIONS)
    assert (refused.value.code, refused.value.message) == (code, message)


def test_only_a_vm_needs_the_stored_sessions():
    assert not needs_sessions(CancelRequest(id="aaaaaa01"))
    assert needs_sessions(CancelRequest(vm="web-1")) and needs_sessions(CancelRequest(id="aaaaaa01", vm="aaaaaa01"))


@pytest.mark.parametrize(
    ("word", "request_"),
    [
        ("3f9c2a1b7d0e", CancelRequest(id="3f9c2a1b7d0e", vm="3f9c2a1b7d0e")),  # may be either
        ("web-1", CancelRequest(vm="web-1")),
        ("db.prod.example.com", CancelRequest(vm="db.prod.example.com")),
        ("Web1abc", CancelRequest(vm="Web1abc")),  # upper case: never a session id
        ("abc", CancelRequest(vm="abc")),  # too short for an id
    ],
)
def test_the_cli_sends_the_word_as_what_it_may_be(word, request_):
    assert cancel_request(word) == request_


@pytest.mark.parametrize("word", ["a/b", "bad\nname", ""])
def test_a_word_that_is_neither_is_refused_before_any_request(word):
    with pytest.raises(FerryError) as refused:
        cancel_request(word)
    assert refused.value.code == "bad_request" and "is neither a session id nor a VM name" in refused.value.message
