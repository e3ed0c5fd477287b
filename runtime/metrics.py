"""Prometheus metrics that every daemon shares: where /metrics listens, the HTTP
server (prometheus-client's own) in a per-daemon registry, the plain-data form
a daemon's pure mapping returns (`Family`), and the running-migration gauges
that agents and coordinators both report.

The daemons keep their state in dicts the event loop owns; the HTTP server
answers from its own thread. So at each scrape the event loop takes a frozen
snapshot, and the collector only maps it (`SnapshotCollector`).
"""

import asyncio
import ipaddress
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, Literal, TypeVar

import msgspec
from prometheus_client import CollectorRegistry, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ferry.proto.progress import Progress
from ferry.runtime.version import VERSION

# A scrape waits this long for the event loop to take a fresh snapshot.
SCRAPE_WAIT_SECONDS = 2.0


class Family(msgspec.Struct, frozen=True):
    """One metric family as plain data: `samples` pairs label values (in the order of
    `labels`) with a value. A counter's name is without its `_total`."""

    name: str
    help: str
    kind: Literal["gauge", "counter"] = "gauge"
    labels: tuple[str, ...] = ()
    samples: tuple[tuple[tuple[str, ...], float], ...] = ()


class RunningMigration(msgspec.Struct, frozen=True):
    """A migration in flight as one daemon knows it; `progress` is its last sample."""

    session: str
    vm: str
    source: str
    dest: str
    progress: Progress | None = None


# Named as KubeVirt's kubevirt_vmi_migration_* where they mean the same.
_PROGRESS_GAUGES: tuple[tuple[str, str, Callable[[Progress], int]], ...] = (
    ("ferry_migration_data_processed_bytes", "Bytes the migration has sent so far.", lambda p: p.data_processed),
    ("ferry_migration_data_remaining_bytes", "Bytes the migration still has to send.", lambda p: p.data_remaining),
    ("ferry_migration_memory_transfer_rate_bytes", "Bytes per second the migration sends now.", lambda p: p.bandwidth_bps),
    ("ferry_migration_dirty_memory_rate_bytes", "Bytes per second the guest dirties now.", lambda p: p.dirty_rate_bps),
)
MIGRATION_LABELS = ("vm", "session", "source", "dest")


def migration_families(migrations: Iterable[RunningMigration]) -> list[Family]:
    """The per-session transfer gauges; a migration without a sample yet shows none."""
    sampled = [(m, m.progress) for m in migrations if m.progress is not None]
    return [
        Family(
            name, help_, labels=MIGRATION_LABELS,
            samples=tuple(((m.vm, m.session, m.source, m.dest), float(value(p))) for m, p in sampled),
        )
        for name, help_, value in _PROGRESS_GAUGES
    ]


def nats_family(connected: bool) -> Family:
    return Family("ferry_nats_connected", "1 while the connection to NATS is up.", samples=(((), 1.0 if connected else 0.0),))


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' (an IPv6 host in brackets) as (host, port); ValueError with a sentence."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:9464)")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: the port must be 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{text!r}: put an IPv6 address in brackets, as [::1]:9464")
    return host, port


def address_problem(key: str, text: str) -> str | None:
    """For config checks: why `text` cannot be a metrics address; None when it can ("" is off)."""
    if not text:
        return None
    try:
        parse_address(text)
    except ValueError as exc:
        return f"{key}: {exc}"
    return None


def metrics_url(address: str) -> str:
    return f"http://{address}/metrics"


class SnapshotCollector(Collector):
    """Maps whatever `families()` returns (a pure function of the latest snapshot) at each scrape."""

    def __init__(self, families: Callable[[], list[Family]]) -> None:
        self._families = families

    def describe(self) -> list[Metric]:
        # Nothing to check at registration: the names come from the pure mapping.
        return []

    def collect(self) -> Iterator[Metric]:
        for family in self._families():
            yield _prometheus_family(family)


def _prometheus_family(family: Family) -> Metric:
    metric: GaugeMetricFamily | CounterMetricFamily
    if family.kind == "counter":
        metric = CounterMetricFamily(family.name, family.help, labels=family.labels)
    else:
        metric = GaugeMetricFamily(family.name, family.help, labels=family.labels)
    for values, value in family.samples:
        metric.add_metric(list(values), value)
    return metric


S = TypeVar("S")


class SnapshotMetrics(Generic[S]):
    """A daemon's registry and /metrics server, answering from the latest frozen
    snapshot of its state: the HTTP thread never reads the loop's own dicts."""

    def __init__(
        self, daemon: str, address: str, snapshot: Callable[[], S], first: S, families: Callable[[S], list[Family]], log
    ) -> None:
        self._address = address
        self._take = snapshot
        self._log = log
        self._snapshot = first
        self.registry = new_registry(daemon)
        self.registry.register(SnapshotCollector(lambda: families(self._on_scrape())))
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        """Serve until cancelled (nothing when the address is "")."""
        self._loop = asyncio.get_running_loop()
        try:
            await serve(self._address, self.registry, self._log)
        finally:
            self._loop = None

    def refresh(self) -> None:
        self._snapshot = self._take()

    def _on_scrape(self) -> S:
        """In the HTTP thread: a snapshot taken now, on the loop (nothing is taken
        between scrapes: 5,000 hosts cost nothing while nobody asks); the last one
        when the loop does not get to it within SCRAPE_WAIT_SECONDS."""
        loop = self._loop
        if loop is None:
            return self._snapshot
        taken = threading.Event()

        def take() -> None:
            try:
                self.refresh()
            except Exception:
                # A snapshot that fails must not end the metrics (nor the daemon): the last one stays.
                self._log.exception("metrics_refresh_failed")
            finally:
                taken.set()

        try:
            loop.call_soon_threadsafe(take)
        except RuntimeError:  # the loop is closing
            return self._snapshot
        taken.wait(SCRAPE_WAIT_SECONDS)
        return self._snapshot


def new_registry(daemon: str) -> CollectorRegistry:
    """A daemon's own registry (never the global one), with the build info in it."""
    registry = CollectorRegistry()
    Info("ferry_build", "The Ferry version this daemon runs.", registry=registry).info({"version": VERSION, "daemon": daemon})
    return registry


async def serve(address: str, registry: CollectorRegistry, log) -> None:
    """Serve /metrics on `address` until cancelled; then the server is shut down.

    A port already taken is logged as an error and the daemon runs on without
    /metrics: a host must still be able to migrate its VMs away when a stray
    process holds the port (Prometheus then alerts on a target that is down)."""
    if not address:
        return
    try:
        host, port = parse_address(address)
        server, thread = start_http_server(port, host, registry=registry)
    except (OSError, ValueError) as exc:
        error = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.error("metrics_not_served", address=address, error=error, action="running without /metrics")
        return
    log.info("metrics_served", url=metrics_url(address))
    try:
        await asyncio.Event().wait()
    finally:
        # shutdown() waits for serve_forever's next poll (up to half a second): off the loop.
        await asyncio.to_thread(_stop, server, thread)


def _stop(server, thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
