"""The agent daemon: observe the host, publish heartbeats and health changes, answer requests."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from nats.aio.client import Client
from nats.micro import add_service

from ferry.agent.beats import Beats
from ferry.agent.config import AgentConfig
from ferry.agent.destination import Destination
from ferry.agent.disk_paths import images_folder
from ferry.agent.health import probe_host
from ferry.agent.hypervisor import Hypervisor, HypervisorUnavailable, NodeFacts
from ferry.agent.jobs import Jobs
from ferry.agent.journal import Journal
from ferry.agent.metrics import AgentMetrics, AgentSnapshot
from ferry.agent.peer_probe import probe
from ferry.agent.probes import run_probes
from ferry.agent.restarts import Restarts
from ferry.agent.source import Source
from ferry.agent.status import AGENT_VERSION, Observation, build_status
from ferry.proto import subjects
from ferry.proto.agent import (
    BandwidthRequest,
    CommitReply,
    DescribeRequest,
    DowntimeRequest,
    ForceCompleteRequest,
    JobRole,
    JobsRequest,
    MeasureRequest,
    MigrateRequest,
    PrepareRequest,
    ProbeRequest,
    SessionRef,
)
from ferry.proto.api import AgentStatusRequest
from ferry.proto.codec import MAX_REQUEST_BYTES, Decoder, encode, request_decoder
from ferry.proto.errors import FerryError
from ferry.proto.events import HealthChanged
from ferry.proto.ha import RestartRequest, RetireRequest
from ferry.proto.host import HealthCheck, HealthState, HostStatus, ReportRequest, UnreadableVm, VmInfo, VmState
from ferry.proto.network import HostNetworks
from ferry.runtime.connection import connect, disconnect
from ferry.runtime.metrics import RunningMigration
from ferry.runtime.service import endpoint
from ferry.runtime.systemd import Notifier

# How often the VM list is read: changes must reach the coordinator well
# before the next regular heartbeat.
INVENTORY_POLL_SECONDS = 1.0
LEASE_CHECK_SECONDS = 1.0
# The verbs an agent answers on `ferry.agent.<host>.<verb>`, and what each reads.
VERB_REQUESTS: dict[str, type] = {
    "status": AgentStatusRequest,
    "describe": DescribeRequest,
    "jobs": JobsRequest,
    "prepare": PrepareRequest,
    "migrate": MigrateRequest,
    "abort": SessionRef,
    "bandwidth": BandwidthRequest,
    "force_complete": ForceCompleteRequest,
    "downtime": DowntimeRequest,
    "commit": SessionRef,
    "rollback": SessionRef,
    "measure": MeasureRequest,
    "probe": ProbeRequest,
    "restart": RestartRequest,
    "retire": RetireRequest,
}
# Verbs answered several at once, and how many at most; one more is answered
# `unavailable` at once. A measurement watches the guest for a second or more
# (up to a minute); a drain's dry run measures every VM of the host together,
# so the limit is generous, but a flood of requests costs at most this many tasks.
CONCURRENT_VERBS = {"measure": 32, "probe": 8, "restart": 8}


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        hypervisor: Hypervisor,
        *,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
    ) -> None:
        self._config = config
        self._hypervisor = hypervisor
        self._notifier = notifier if notifier is not None else Notifier.from_environ()
        self._clock = clock
        self._log = structlog.get_logger().bind(host=config.host)
        self._boot_id = uuid.uuid4().hex[:12]
        self._seq = 0
        self._facts: NodeFacts | None = None
        self._vms: list[VmInfo] = []
        self._unreadable: list[UnreadableVm] = []
        self._networks: HostNetworks | None = None
        self._networks_error = ""
        self._checks: list[HealthCheck] = []
        self._changed = asyncio.Event()
        self._nc: Client | None = None
        self._last_status: HostStatus | None = None
        self._beats = Beats()
        self._report_decoder = Decoder(ReportRequest, "report request", max_bytes=MAX_REQUEST_BYTES)
        self._journal = Journal(config.state_dir, clock=clock)
        self._source = Source(config, hypervisor, self._publish, self._journal, clock=clock)
        self._destination = Destination(config, hypervisor, clock, self._journal, images=images_folder(config))
        self._restarts = Restarts(config.host, hypervisor, images_folder(config))
        self._jobs = Jobs(config.host, hypervisor, [self._source, self._destination])
        self._metrics = AgentMetrics(config.metrics_address, self.metrics_snapshot, config.host)

    async def run(self, stop: asyncio.Event) -> None:
        self._log.info("agent_starting", backend=self._hypervisor.backend, version=AGENT_VERSION)
        nc = self._nc = await connect(self._config.nats, name=f"ferry-agent-{self._config.host}", log=self._log)
        try:
            await self._recover()
            # Not a service endpoint: a coordinator publishes it and waits for no answer.
            await nc.subscribe(subjects.agent_verb(self._config.host, "report"), cb=self._on_report_request)
            service = await add_service(
                nc,
                name="ferry-agent",
                version=AGENT_VERSION,
                description="Ferry agent on one hypervisor",
                metadata={"host": self._config.host},
            )
            async with service:
                group = service.add_group(name=subjects.agent_prefix(self._config.host))
                handlers = self._verb_handlers()
                for verb, request_type in VERB_REQUESTS.items():
                    several = {"concurrent": True, "limit": CONCURRENT_VERBS[verb]} if verb in CONCURRENT_VERBS else {}
                    await group.add_endpoint(
                        name=verb,
                        handler=endpoint(request_decoder(request_type, verb), handlers[verb], log=self._log, verb=verb, **several),
                    )
                await self._probe_health_once()
                await self._read_inventory_once()
                await self._read_networks_once()
                # Serving, with a first look at libvirt. Ready even when libvirtd did not
                # answer: the agent keeps trying, and its heartbeats say so to the coordinator.
                self._notifier.ready(self._systemd_status())
                async with asyncio.TaskGroup() as tg:
                    loops = [
                        tg.create_task(self._forever("health", self._probe_health_once, self._config.health.interval)),
                        tg.create_task(self._forever("inventory", self._read_inventory_once, INVENTORY_POLL_SECONDS)),
                        tg.create_task(self._forever("networks", self._read_networks_once, self._config.health.interval)),
                        tg.create_task(self._heartbeat_loop()),
                        tg.create_task(self._notifier.keep_alive(self._systemd_status)),
                        tg.create_task(self._metrics.run()),
                        tg.create_task(
                            self._forever("leases", self._destination.expire_leases, LEASE_CHECK_SECONDS)
                        ),
                    ]
                    if self._config.migration.dirty_rate_interval:
                        loops.append(
                            tg.create_task(
                                self._forever(
                                    "dirty_rates", self._measure_dirty_rates, self._config.migration.dirty_rate_interval
                                )
                            )
                        )
                    await stop.wait()
                    for task in loops:
                        task.cancel()
        finally:
            await self._source.close()
            await self._hypervisor.close()
            await disconnect(nc)
            self._log.info("agent_stopped")

    def _verb_handlers(self) -> dict[str, Callable[[Any], Awaitable[Any]]]:
        return {
            "status": self._handle_status,
            "describe": self._source.describe,
            "jobs": self._jobs.answer,
            "prepare": self._destination.prepare,
            "migrate": self._source.migrate,
            "abort": self._source.abort,
            "bandwidth": self._source.set_bandwidth,
            "force_complete": self._source.force_complete,
            "downtime": self._source.set_downtime,
            "commit": self._handle_commit,
            "rollback": self._destination.rollback,
            "measure": self._source.measure,
            "probe": lambda request: probe(request, me=self._config.host),
            "restart": self._restarts.restart,
            "retire": self._restarts.retire,
        }

    async def _recover(self) -> None:
        """The sessions of the agent's previous life, taken up before any verb is
        served: a request must never find a job this agent has not remembered yet.
        After connecting, since a job that ended meanwhile publishes its result."""
        try:
            await self._journal.open()
            entries = await self._journal.load()
        except OSError as exc:
            # Serving without a journal could start a migration twice after the next restart.
            self._log.error("journal_unusable", state_dir=self._config.state_dir, error=str(exc))
            raise
        await self._source.recover([e for e in entries if e.role == JobRole.SOURCE])
        await self._destination.recover([e for e in entries if e.role == JobRole.DESTINATION])
        if entries:
            self._log.info("journal_recovered", sessions=len(entries), state_dir=self._config.state_dir)

    async def _forever(self, name: str, step: Callable[[], Awaitable[None]], every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await step()
            except Exception:
                # One bad read must not end the loop: the host still needs watching.
                self._log.exception("loop_step_failed", loop=name)

    async def _probe_health_once(self) -> None:
        probe = await probe_host(
            self._hypervisor, self._config.images_dir, self._config.health, plugins=self._run_plugins
        )
        if probe.facts is not None:
            self._facts = probe.facts
        previous = self._checks
        self._checks = probe.checks
        if [(c.name, c.state) for c in previous] != [(c.name, c.state) for c in probe.checks]:
            before = HealthState.worst([c.state for c in previous])
            self._log.info(
                "health_changed",
                previous=str(before),
                current=str(probe.state),
                checks={c.name: f"{c.state}: {c.message}" for c in probe.checks},
            )
            await self._publish(
                subjects.host_event(self._config.host),
                encode(
                    HealthChanged(
                        host=self._config.host,
                        previous=before,
                        current=probe.state,
                        checks=probe.checks,
                        at=self._clock(),
                    )
                ),
            )
            self._changed.set()

    async def _run_plugins(self) -> list[HealthCheck]:
        health = self._config.health
        return await run_probes(health.probe_dir, health.probe_timeout, host=self._config.host)

    async def _read_inventory_once(self) -> None:
        try:
            inventory = await self._hypervisor.list_vms()
        except HypervisorUnavailable:
            # VMs keep running without their management daemon; keep the last
            # known list (the health check already reports the outage).
            return
        if inventory.unreadable != self._unreadable:
            for vm in inventory.unreadable:
                self._log.warning("vm_unreadable", vm=vm.name, reason=vm.reason)
        if (inventory.vms, inventory.unreadable) != (self._vms, self._unreadable):
            self._vms, self._unreadable = inventory.vms, inventory.unreadable
            self._changed.set()

    async def _read_networks_once(self) -> None:
        try:
            networks = await self._hypervisor.network_facts()
        except HypervisorUnavailable as exc:
            # The last known networks stand; placement still has them, prepare checks live.
            if self._networks_error != str(exc):
                self._log.warning("networks_unread", error=str(exc))
            self._networks_error = str(exc)
            return
        self._networks_error = ""
        if networks != self._networks:
            self._networks = networks
            self._changed.set()

    async def _measure_dirty_rates(self) -> None:
        running = [vm.name for vm in self._vms if vm.state == VmState.RUNNING]
        await self._source.refresh_dirty_rates(running)

    def current_status(self) -> HostStatus:
        return build_status(
            host=self._config.host,
            seq=self._seq,
            boot_id=self._boot_id,
            sent_at=self._clock(),
            interval=self._config.heartbeat_interval,
            backend=self._hypervisor.backend,
            peer_uri=self._config.hypervisor.peer_uri,
            migration_address=self._config.hypervisor.migration_address,
            observation=Observation(
                facts=self._facts, vms=self._vms, checks=self._checks, unreadable=self._unreadable, networks=self._networks
            ),
            last_facts=self._facts,
            migrations_in_flight=self._source.in_flight,
            short_beats=self._beats.allowed,
        )

    def metrics_snapshot(self) -> AgentSnapshot:
        """On the event loop: copies of what /metrics shows (read by the HTTP thread)."""
        host = self._config.host
        return AgentSnapshot(
            host=host,
            nats_connected=self._nc is not None and self._nc.is_connected,
            checks=tuple(self._checks),
            running_vms=sum(1 for vm in self._vms if vm.state == VmState.RUNNING),
            heartbeats_sent=self._seq,
            incoming=len(self._destination.reservations),
            migrations=tuple(
                RunningMigration(job.request.session_id, job.request.vm, host, job.request.dest, job.last_progress)
                for job in self._source.running()
            ),
        )

    async def _heartbeat_loop(self) -> None:
        interval = self._config.heartbeat_interval
        while True:
            try:
                self._changed.clear()
                self._seq += 1
                status = self.current_status()
                self._last_status = status
                await self._publish(subjects.host_status(self._config.host), encode(self._beats.next(status)))
            except Exception:
                self._log.exception("heartbeat_failed")
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=interval)
            except TimeoutError:
                pass

    async def _on_report_request(self, msg) -> None:
        try:
            request = self._report_decoder.decode(msg.data)
        except FerryError as exc:
            self._log.warning("bad_report_request", reason=exc.message)
            return
        self._beats.ask(request.short_beats)
        self._changed.set()  # the full report goes out now, not at the next beat

    def _systemd_status(self) -> str:
        """`systemctl status` shows this line."""
        checks = ", ".join(f"{c.name} {c.state}" for c in self._checks if c.state != HealthState.OK)
        return f"{len(self._vms)} VMs, health {HealthState.worst([c.state for c in self._checks])}" + (
            f" ({checks})" if checks else ""
        )

    async def _publish(self, subject: str, payload: bytes) -> None:
        assert self._nc is not None
        try:
            await self._nc.publish(subject, payload)
        except Exception as exc:
            # While NATS is away the client buffers; only a closed client lands here.
            self._log.warning("publish_failed", subject=subject, error=str(exc) or type(exc).__name__)

    async def _handle_status(self, _request: AgentStatusRequest) -> Any:
        return self._last_status or self.current_status()

    async def _handle_commit(self, request: SessionRef) -> CommitReply:
        """Commit ends a session on either end: where the VM arrived (or a reservation
        for it is held) it is the destination's confirmation, elsewhere the source's cleanup."""
        arrived = self._destination.reservations.get(request.session_id) is not None
        if arrived or await self._hypervisor.vm_state(request.vm) is not None:
            return await self._destination.commit(request)
        return await self._source.commit(request)
