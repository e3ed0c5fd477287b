"""One way to connect to NATS: reconnect forever, log every transition."""

import asyncio
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import structlog
from nats.aio.client import Client

from ferry.proto.errors import ErrorCode, FerryError
from ferry.runtime.config import NatsSettings
from ferry.runtime.identity import inbox_prefix, read_identity


def _tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    if not (settings.tls_ca or settings.tls_cert):
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca or None)
    if settings.tls_cert:
        context.load_cert_chain(settings.tls_cert, settings.tls_key or None)
    return context


def identity_options(settings: NatsSettings) -> dict[str, Any]:
    """Credentials and TLS, the same for daemons and the CLI. A Ferry identity
    signs with its nkey and takes replies only under its own inbox (the
    permissions let no one else subscribe there)."""
    options: dict[str, Any] = {}
    if settings.identity:
        try:
            identity = read_identity(settings.identity)
        except ValueError as exc:
            raise FerryError(ErrorCode.UNAUTHORIZED, str(exc)) from None
        options["nkeys_seed_str"] = identity.seed
        options["inbox_prefix"] = inbox_prefix(identity.name)
    if settings.creds:
        options["user_credentials"] = settings.creds
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password
    if settings.token:
        options["token"] = settings.token
    tls = _tls_context(settings)
    if tls is not None:
        options["tls"] = tls
    return options


def connect_error(settings: NatsSettings, exc: BaseException) -> FerryError:
    """Why connecting failed, as a code and a sentence a person can act on."""
    where = ", ".join(settings.servers)
    text = str(exc) or type(exc).__name__
    if "authorization violation" in text.lower() or "authentication" in text.lower():
        return FerryError(ErrorCode.UNAUTHORIZED, f"NATS at {where} refused these credentials ({text})")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return FerryError(
            ErrorCode.UNAVAILABLE, f"the TLS certificate of NATS at {where} is not trusted ({exc.verify_message}); name its CA"
        )
    if isinstance(exc, ssl.SSLError):
        return FerryError(ErrorCode.UNAVAILABLE, f"TLS with NATS at {where} failed ({text})")
    if isinstance(exc, TimeoutError):
        return FerryError(ErrorCode.UNAVAILABLE, f"NATS at {where} did not answer in time")
    return FerryError(ErrorCode.UNAVAILABLE, f"cannot reach NATS at {where} ({text})")


async def connect(
    settings: NatsSettings,
    *,
    name: str,
    log: Any = None,
    on_reconnected: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    """Connect, retrying forever.

    nats-py's default gives up after 60 attempts (about two minutes); a daemon
    must outlive any NATS outage, so attempts are unlimited, including the
    first connection (the server may start after us).
    """
    log = log or structlog.get_logger()
    state = {"down_logged": False}

    async def log_error(exc: Exception) -> None:
        if "permissions violation" in str(exc).lower():
            # Connected, but NATS refused one publish or subscription: a permissions
            # config that does not fit this daemon's identity. Loud, each time.
            log.error("nats_permission_denied", error=str(exc))
            return
        # Each failed attempt calls this; say it once per outage, not once a second.
        if not state["down_logged"]:
            log.warning("nats_unreachable", error=connect_error(settings, exc).message)
            state["down_logged"] = True

    async def log_disconnected() -> None:
        log.warning("nats_disconnected")

    async def log_reconnected() -> None:
        state["down_logged"] = False
        log.info("nats_reconnected", server=str(nc.connected_url.netloc if nc.connected_url else ""))
        if on_reconnected is not None:
            await on_reconnected()

    options: dict[str, Any] = dict(
        servers=settings.servers,
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=settings.reconnect_wait,
        connect_timeout=settings.connect_timeout,
        error_cb=log_error,
        disconnected_cb=log_disconnected,
        reconnected_cb=log_reconnected,
        # Heartbeats must not pile up in memory during a long outage.
        pending_size=8 * 1024 * 1024,
    )
    options.update(identity_options(settings))
    nc = nats.NATS()
    await nc.connect(**options)
    log.info("nats_connected", server=str(nc.connected_url.netloc if nc.connected_url else ""))
    return nc


async def connect_once(settings: NatsSettings, *, name: str) -> Client:
    """For short-lived clients (the CLI): each server once, in a random order (so
    clients spread over a cluster), the first that answers; fail fast with the
    last error instead of waiting. nats-py alone gives up on the first server
    that resets the connection during its handshake, with the others untried."""
    servers = list(settings.servers)
    random.shuffle(servers)
    last: BaseException | None = None
    for server in servers:
        try:
            return await _connect_to(server, settings, name=name)
        except Exception as exc:
            last = exc
    assert last is not None, "a config with no servers is refused when it is checked"
    raise last


async def _connect_to(server: str, settings: NatsSettings, *, name: str) -> Client:
    # The others follow: once connected, a client waiting on a long operation
    # (--wait) moves to another server when its own goes, a few tries each.
    others = [s for s in settings.servers if s != server]
    options: dict[str, Any] = dict(
        servers=[server, *others],
        dont_randomize=True,
        name=name,
        allow_reconnect=True,
        connect_timeout=settings.connect_timeout,
        max_reconnect_attempts=3,
        reconnect_time_wait=0.2,
    )
    options.update(identity_options(settings))

    seen: list[Exception] = []

    async def remember(exc: Exception) -> None:
        seen.append(exc)

    options["error_cb"] = remember
    nc = nats.NATS()
    try:
        # A person is waiting: bound each attempt.
        await asyncio.wait_for(nc.connect(**options), timeout=settings.connect_timeout * 2)
    except (nats.errors.NoServersError, TimeoutError):
        # The servers tried gave their reasons (credentials refused, an untrusted
        # certificate): say the first, not "no servers" or "no answer in time".
        if seen:
            raise seen[0] from None
        raise
    return nc


async def disconnect(nc: Client) -> None:
    """Drain (let handlers finish, flush what is buffered); if NATS is away, just close."""
    if nc.is_closed:
        return
    try:
        await nc.drain()
    except (nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError, nats.errors.FlushTimeoutError):
        try:
            await nc.close()
        except (OSError, AttributeError):
            # The server went away mid-close: there is nothing left to flush to.
            # (Over TLS, asyncio's closed SSL transport raises AttributeError.)
            pass
