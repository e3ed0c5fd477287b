"""runtime/systemd.py: where notifications go, the watchdog interval, and sending for real
to a datagram socket the test binds (as systemd does)."""

import asyncio
import os
import socket

import pytest

from ferry.runtime.systemd import Notifier, message, notify_address, watchdog_seconds


@pytest.mark.parametrize(
    ("value", "address"),
    [
        (None, None),
        ("", None),
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@/org/freedesktop/systemd1/notify/123", b"\0/org/freedesktop/systemd1/notify/123"),
        ("@sd-notify", b"\0sd-notify"),
        # systemd's vsock form (for virtual machines) and relative paths are not spoken here.
        ("vsock:2:1234", None),
        ("run/notify", None),
    ],
)
def test_notify_socket_forms(value, address):
    assert notify_address(value) == address


@pytest.mark.parametrize(
    ("usec", "watchdog_pid", "pid", "seconds"),
    [
        (None, None, 100, None),
        ("", None, 100, None),
        ("30000000", None, 100, 30.0),
        ("2000000", "", 100, 2.0),
        ("2000000", "100", 100, 2.0),
        # A child that inherited the variables is not the one systemd watches.
        ("2000000", "101", 100, None),
        ("2000000", "not-a-pid", 100, None),
        ("0", None, 100, None),
        ("-5", None, 100, None),
        ("30s", None, 100, None),
    ],
)
def test_watchdog_interval(usec, watchdog_pid, pid, seconds):
    assert watchdog_seconds(usec, watchdog_pid, pid) == seconds


def test_pings_at_half_the_watchdog_timeout_and_only_with_a_socket():
    assert Notifier.from_environ({"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "30000000"}, pid=1).watchdog_every == 15.0
    assert Notifier.from_environ({"WATCHDOG_USEC": "30000000"}, pid=1).watchdog_every is None
    wrong_pid = {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}
    assert Notifier.from_environ(wrong_pid, pid=1).watchdog_every is None


def test_message_lines():
    assert message(READY=1, STATUS="leading (term 3), 2 hosts") == b"READY=1\nSTATUS=leading (term 3), 2 hosts"
    # A newline inside a value would start another assignment.
    assert message(STATUS="two\nlines") == b"STATUS=two lines"


def test_without_notify_socket_every_call_does_nothing():
    notifier = Notifier.from_environ({}, pid=1)
    assert not notifier.enabled
    assert (notifier.ready("up"), notifier.status("x"), notifier.stopping(), notifier.send(WATCHDOG=1)) == (
        False, False, False, False
    )
    asyncio.run(asyncio.wait_for(notifier.keep_alive(lambda: "status"), timeout=5))  # returns at once


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def test_sends_to_a_socket_path(listener):
    path, sock = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path}, pid=1)
    assert notifier.ready("standby, 0 hosts")
    assert sock.recv(4096) == b"READY=1\nSTATUS=standby, 0 hosts"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_sends_to_an_abstract_socket():
    name = f"ferry-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}, pid=1).send(READY=1)
        assert sock.recv(4096) == b"READY=1"


def test_a_socket_nobody_listens_on_is_logged_once_and_never_raises(tmp_path):
    logged = []

    class Log:
        def warning(self, event, **fields):
            logged.append((event, fields["socket"]))

    notifier = Notifier(str(tmp_path / "gone"), None, log=Log())
    assert notifier.send(READY=1) is False
    assert notifier.send(WATCHDOG=1) is False
    assert logged == [("systemd_notify_failed", str(tmp_path / "gone"))]


async def test_keep_alive_pings_and_says_each_new_status(listener):
    path, sock = listener
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    statuses = iter(["standby, 0 hosts", "standby, 0 hosts", "leading (term 1), 3 hosts"])
    last = ["leading (term 1), 3 hosts"]

    def status() -> str:
        last[0] = next(statuses, last[0])
        return last[0]

    # WATCHDOG_USEC of 0.1 s: a ping every 0.05 s.
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}, pid=1)
    task = asyncio.create_task(notifier.keep_alive(status))
    try:
        received = [await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout=5) for _ in range(4)]
    finally:
        task.cancel()
    assert received == [
        b"WATCHDOG=1\nSTATUS=standby, 0 hosts",
        b"WATCHDOG=1",
        b"WATCHDOG=1\nSTATUS=leading (term 1), 3 hosts",
        b"WATCHDOG=1",
    ]


async def test_a_failing_status_never_stops_the_pings(listener):
    path, sock = listener
    sock.setblocking(False)
    loop = asyncio.get_running_loop()

    def status() -> str:
        raise RuntimeError("registry gone")

    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}, pid=1)
    task = asyncio.create_task(notifier.keep_alive(status))
    try:
        received = [await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout=5) for _ in range(2)]
    finally:
        task.cancel()
    assert received == [b"WATCHDOG=1", b"WATCHDOG=1"]
