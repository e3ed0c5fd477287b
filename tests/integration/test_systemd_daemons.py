"""The daemons as systemd runs them: notifications on $NOTIFY_SOCKET (a datagram socket
the test binds, as systemd does), the watchdog from $WATCHDOG_USEC, syslog priorities
on the journal stream, and Python under MemoryDenyWriteExecute."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import coordinator_toml, script, simulated_agent_toml

pytestmark = pytest.mark.integration

WATCHDOG_USEC = "2000000"  # 2 s: a ping every second
READY_SECONDS = 30.0
# What systemd's MemoryDenyWriteExecute= asks of a process, with the kernel's own switch
# (PR_SET_MDWE, Linux 6.3+), inherited across execve: no mapping both writable and executable.
MDWE_LAUNCHER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit("PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""


class NotifySocket:
    """systemd's end of sd_notify: a bound datagram socket, read in order."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.received: list[dict[str, str]] = []

    def until(self, key: str, timeout: float, count: int = 1) -> list[dict[str, str]]:
        """Every message until `count` of them set `key`; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while sum(key in m for m in self.received) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{count} x {key} not received within {timeout} s; received {self.received}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        return self.received

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_path(tmp_path):
    listener = NotifySocket(str(tmp_path / "notify"))
    yield listener, str(tmp_path / "notify")
    listener.close()


@pytest.fixture
def notify_abstract():
    name = f"ferry-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifySocket(b"\0" + name.encode())
    yield listener, "@" + name
    listener.close()


@pytest.fixture
def started(tmp_path):
    """Starts daemons with an environment of the test's choosing; stops every one it started."""
    procs: list[subprocess.Popen] = []

    def start(name: str, argv: list[str], env: dict[str, str], config_toml: str) -> tuple[subprocess.Popen, Path]:
        config, log = tmp_path / f"{name}.toml", tmp_path / f"{name}.log"
        config.write_text(config_toml)
        with open(log, "ab") as out:
            extra = dict(env)
            if extra.pop("JOURNAL_STREAM", None) is not None:
                st = os.fstat(out.fileno())
                extra["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            proc = subprocess.Popen(
                [*argv, "--config", str(config)], stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **extra},
            )
        procs.append(proc)
        return proc, log

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def notify_env(address: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": WATCHDOG_USEC}


def assert_notify_lifecycle(proc: subprocess.Popen, listener: NotifySocket, log: Path) -> list[dict[str, str]]:
    """READY=1, then watchdog pings (more than one), then STOPPING=1 on SIGTERM and a clean exit."""
    try:
        listener.until("READY", READY_SECONDS)
        listener.until("WATCHDOG", 10.0, count=len([m for m in listener.received if "WATCHDOG" in m]) + 2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- daemon log ---\n{log.read_text(errors='replace')}") from None
    proc.send_signal(signal.SIGTERM)
    messages = listener.until("STOPPING", 10.0)
    assert proc.wait(timeout=30) == 0, log.read_text(errors="replace")
    keys = [next(iter(m)) for m in messages]
    ready, stopping = keys.index("READY"), keys.index("STOPPING")
    pings = [i for i, m in enumerate(messages) if "WATCHDOG" in m]
    assert messages[0] == {"STATUS": "starting: connecting to NATS"}
    assert ready < pings[0] and len([i for i in pings if i < stopping]) >= 2
    assert messages[stopping] == {"STOPPING": "1", "STATUS": "stopping"}
    assert "READY" not in keys[ready + 1:]
    return messages


def test_coordinator_is_ready_pings_the_watchdog_and_says_it_stops(nats_server, notify_path, started):
    listener, address = notify_path
    proc, log = started("coordinator", [script("ferry-coordinator")], notify_env(address), coordinator_toml(nats_server.url))
    messages = assert_notify_lifecycle(proc, listener, log)
    ready = next(m for m in messages if "READY" in m)
    # Alone on its NATS, the coordinator leads soon; at READY=1 it may still stand by.
    assert ready["STATUS"] in ("standby, 0 hosts", "leading (term 1), 0 hosts")
    assert any(m.get("STATUS", "").startswith("leading (term ") for m in messages), messages


def test_agent_is_ready_pings_the_watchdog_and_says_it_stops(nats_server, notify_abstract, started, tmp_path):
    listener, address = notify_abstract
    config = simulated_agent_toml("hv1", nats_server.url, tmp_path, vms=[("web-1", 1, 256), ("db-1", 2, 512)])
    proc, log = started("hv1", [script("ferry-agent")], notify_env(address), config)
    messages = assert_notify_lifecycle(proc, listener, log)
    assert next(m for m in messages if "READY" in m)["STATUS"] == "2 VMs, health ok"


def test_coordinator_runs_with_memory_deny_write_execute(nats_server, notify_path, started):
    """The unit's MemoryDenyWriteExecute=yes: CPython, ssl and the nkey signing still
    connect, open the KV buckets and serve (READY=1)."""
    listener, address = notify_path
    argv = [sys.executable, "-c", MDWE_LAUNCHER, script("ferry-coordinator")]
    proc, log = started("coordinator", argv, {"NOTIFY_SOCKET": address}, coordinator_toml(nats_server.url))
    try:
        listener.until("READY", READY_SECONDS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- daemon log ---\n{log.read_text(errors='replace')}") from None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_lines_on_the_journal_carry_their_priority(nats_server, started, tmp_path):
    """An agent whose state_dir cannot be made (a file stands where its parent should be)
    logs the error and exits 1; on the journal stream, that line starts with <3>."""
    (tmp_path / "a-file").write_text("not a folder")
    config = simulated_agent_toml("hv1", nats_server.url, tmp_path, state_dir=tmp_path / "a-file" / "state")
    proc, log = started("hv1", [script("ferry-agent")], {"JOURNAL_STREAM": "set below"}, config)
    assert proc.wait(timeout=60) == 1
    lines = log.read_text().splitlines()
    priorities = {json.loads(line[3:])["event"]: line[:3] for line in lines if line[3:4] == "{"}
    assert (priorities["agent_starting"], priorities["nats_connected"]) == ("<6>", "<6>"), lines
    assert (priorities["journal_unusable"], priorities["daemon_crashed"]) == ("<3>", "<3>"), lines
    # Every line is prefixed, none is left at the journal's default priority.
    assert all(line[:1] == "<" for line in lines), lines
