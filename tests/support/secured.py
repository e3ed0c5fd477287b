"""Test nats-servers run secured, as the lab and production do: TLS and one nkey
identity per daemon and operator (lab/nats_security.py).

A secured server's URLs are `NatsUrl`s: strings that know their server, so
the helpers that write daemon configs and connect clients (`identity_lines`,
`settings_for`, `connect_as`) find the identity to use from the URL they are
given. An identity is made the first time it is asked for; the servers then
reload their authorization, and the helper returns once that identity can
connect.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import nats
from nats.aio.client import Client

from ferry.cli.identities import Member
from ferry.lab.nats_security import LAB_ADMIN, NatsSecurity
from ferry.runtime.config import NatsSettings
from ferry.runtime.connection import connect_once, identity_options
from ferry.runtime.identity import Role

if TYPE_CHECKING:
    from tests.support.nats_server import NatsServer

RELOAD_SECONDS = 10.0


class NatsUrl(str):
    """A URL of a secured test server (a plain `str` everywhere else)."""

    secured: SecuredNats

    def __new__(cls, url: str, secured: SecuredNats) -> NatsUrl:
        self = super().__new__(cls, url)
        self.secured = secured
        return self


class SecuredNats:
    """The security of one test server or cluster, and the servers to reload."""

    def __init__(self, security: NatsSecurity) -> None:
        self.security = security
        self.servers: list[NatsServer] = []

    def ensure(self, wanted: Iterable[tuple[str, Role]]) -> None:
        made = self.security.ensure(list(wanted))
        if not made:
            return
        running = [s for s in self.servers if s.proc is not None and s.proc.poll() is None]
        for server in running:
            server.proc.send_signal(signal.SIGHUP)
        self._wait_reloaded(running, made[0])

    def _wait_reloaded(self, servers: list[NatsServer], newest: Member) -> None:
        """Until an identity made now connects to every running server (the reload is asynchronous)."""
        for server in servers:
            settings = self.security.settings([server.url], newest.name, newest.role, connect_timeout=1.0)
            deadline = time.monotonic() + RELOAD_SECONDS
            while True:
                try:
                    # In a thread: the caller may be inside a running event loop.
                    with ThreadPoolExecutor(1) as pool:
                        pool.submit(asyncio.run, _try_connect(settings)).result()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"nats-server at {server.url} did not take the new identities") from None
                    time.sleep(0.1)


async def _try_connect(settings: NatsSettings) -> None:
    nc = await connect_once(settings, name="ferry-test-reload")
    await nc.close()


def _secured_of(urls: str | list[str]) -> SecuredNats | None:
    first = urls if isinstance(urls, str) else (urls[0] if urls else None)
    return first.secured if isinstance(first, NatsUrl) else None


def identity_lines(urls: str | list[str], name: str, role: Role) -> str:
    """The `[nats]` keys of a daemon's config acting as `name` ("" for a plain server)."""
    secured = _secured_of(urls)
    if secured is None:
        return ""
    secured.ensure([(name, role)])
    return secured.security.config_lines(name, role)


def ensure_identities(urls: str | list[str], wanted: Iterable[tuple[str, Role]]) -> None:
    """Make many identities with one reload (a fleet of simulated hosts)."""
    secured = _secured_of(urls)
    if secured is not None:
        secured.ensure(wanted)


def settings_for(
    urls: str | list[str], name: str = LAB_ADMIN, role: Role = Role.ADMIN, **options: float
) -> NatsSettings:
    """Client settings acting as `name` (default: the lab's admin operator)."""
    servers = [str(u) for u in ([urls] if isinstance(urls, str) else urls)]
    secured = _secured_of(urls)
    if secured is None:
        return NatsSettings(servers=servers, **options)
    secured.ensure([(name, role)])
    return secured.security.settings(servers, name, role, **options)


async def connect_as(urls: str | list[str], name: str = LAB_ADMIN, role: Role = Role.ADMIN, **options) -> Client:
    """A raw NATS connection acting as `name`; `options` go to nats.connect as they are."""
    settings = settings_for(urls, name, role)
    return await nats.connect(servers=settings.servers, **identity_options(settings), **options)


def cli_args(urls: str | list[str], name: str = LAB_ADMIN, role: Role = Role.ADMIN) -> list[str]:
    """`ferry` command-line options that reach these servers as `name`."""
    settings = settings_for(urls, name, role)
    args = ["--server", ",".join(settings.servers)]
    if settings.identity:
        args += ["--identity", settings.identity, "--tls-ca", settings.tls_ca]
    return args
