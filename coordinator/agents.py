"""Requests to agents (`ferry.agent.<host>.<verb>`), typed, with errors as sentences."""

from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client

from ferry.proto import subjects
from ferry.proto.agent import (
    AbortReply,
    BandwidthRequest,
    CommitReply,
    DescribeRequest,
    DirtyRate,
    DowntimeRequest,
    ForceCompleteRequest,
    JobsReply,
    JobsRequest,
    MeasureRequest,
    MigrateRequest,
    MigrationState,
    PrepareReply,
    PrepareRequest,
    ProbeReply,
    ProbeRequest,
    RollbackReply,
    SessionRef,
    SteerReply,
    VmDescription,
)
from ferry.proto.codec import ReplyDecoder, encode
from ferry.proto.errors import ErrorCode, FerryError
from ferry.proto.ha import RestartReply, RestartRequest, RetireReply, RetireRequest

T = TypeVar("T")

_DESCRIBE = ReplyDecoder(VmDescription, "describe")
_RESTARTED = ReplyDecoder(RestartReply, "restart")
_RETIRED = ReplyDecoder(RetireReply, "retire")
_PREPARE = ReplyDecoder(PrepareReply, "prepare")  # type: ignore[arg-type]
_MIGRATION = ReplyDecoder(MigrationState, "migrate")
_ABORT = ReplyDecoder(AbortReply, "abort")
_DIRTY_RATE = ReplyDecoder(DirtyRate, "dirty rate")
_PROBE = ReplyDecoder(ProbeReply, "probe reply")
_COMMIT = ReplyDecoder(CommitReply, "commit")
_ROLLBACK = ReplyDecoder(RollbackReply, "rollback")
_JOBS = ReplyDecoder(JobsReply, "jobs")
_STEER = ReplyDecoder(SteerReply, "steer")


class AgentClient:
    def __init__(self, nc: Client, *, timeout: float = 10.0) -> None:
        self._nc = nc
        self._timeout = timeout

    async def _request(self, host: str, verb: str, message: Any, decoder: ReplyDecoder[T], timeout: float | None = None) -> T:
        subject = subjects.agent_verb(host, verb)
        wait = timeout or self._timeout
        try:
            reply = await self._nc.request(subject, encode(message), timeout=wait)
        except nats.errors.NoRespondersError:
            raise FerryError(ErrorCode.UNAVAILABLE, f"the agent on {host} does not answer ({verb})") from None
        except nats.errors.TimeoutError:
            raise FerryError(ErrorCode.TIMEOUT, f"the agent on {host} did not answer {verb} within {wait:g} s") from None
        return decoder.decode(reply.data)

    async def describe(self, host: str, vm: str, *, definition: bool = False) -> VmDescription:
        return await self._request(host, "describe", DescribeRequest(vm=vm, definition=definition), _DESCRIBE)

    async def definition(self, host: str, vm: str) -> VmDescription:
        """The VM described with its persistent definition (kept for HA restarts)."""
        return await self.describe(host, vm, definition=True)

    async def retire(self, host: str, request: RetireRequest) -> RetireReply:
        return await self._request(host, "retire", request, _RETIRED, timeout=max(self._timeout, 30.0))

    async def restart(self, host: str, request: RestartRequest) -> RestartReply:
        # Defining and starting a guest (QEMU start-up, leases) can take a moment.
        return await self._request(host, "restart", request, _RESTARTED, timeout=max(self._timeout, 60.0))

    async def probe(self, host: str, request: ProbeRequest) -> ProbeReply:
        """Whether `host` reaches the libvirtd of another host's peer URI."""
        return await self._request(host, "probe", request, _PROBE, timeout=self._timeout + request.seconds)

    async def measure(self, host: str, request: MeasureRequest) -> DirtyRate:
        # The hypervisor watches the guest for `seconds` before it answers.
        return await self._request(host, "measure", request, _DIRTY_RATE, timeout=self._timeout + request.seconds)

    async def prepare(self, host: str, request: PrepareRequest) -> PrepareReply:
        # Creating images for storage copy can take a moment.
        return await self._request(host, "prepare", request, _PREPARE, timeout=max(self._timeout, 60.0))

    async def migrate(self, host: str, request: MigrateRequest) -> MigrationState:
        return await self._request(host, "migrate", request, _MIGRATION)

    async def abort(self, host: str, ref: SessionRef) -> AbortReply:
        return await self._request(host, "abort", ref, _ABORT)

    async def bandwidth(self, host: str, request: BandwidthRequest) -> MigrationState:
        return await self._request(host, "bandwidth", request, _MIGRATION)

    async def force_complete(self, host: str, request: ForceCompleteRequest) -> SteerReply:
        return await self._request(host, "force_complete", request, _STEER)

    async def downtime(self, host: str, request: DowntimeRequest) -> SteerReply:
        return await self._request(host, "downtime", request, _STEER)

    async def commit(self, host: str, ref: SessionRef) -> CommitReply:
        return await self._request(host, "commit", ref, _COMMIT)

    async def rollback(self, host: str, ref: SessionRef) -> RollbackReply:
        return await self._request(host, "rollback", ref, _ROLLBACK)

    async def jobs(self, host: str, request: JobsRequest) -> JobsReply:
        """What the agent knows of sessions (its journal, libvirt's jobs) and where VMs are."""
        return await self._request(host, "jobs", request, _JOBS)
