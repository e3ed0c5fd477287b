"""What an agent says about its host: the heartbeat on `ferry.host.<host>.status`."""

import enum
import functools
import hashlib
import re
from typing import Annotated

import msgspec

from ferry.proto.codec import Decoder, readable
from ferry.proto.errors import FerryError
from ferry.proto.names import VM_NAME_MAX, HostName, NonNegative, Seconds, VmName, vm_name_problem
from ferry.proto.network import Attachment, HostNetworks


class HealthState(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _HEALTH_RANK[self]

    @classmethod
    def worst(cls, states: "list[HealthState]") -> "HealthState":
        return max(states, key=lambda s: s.rank, default=cls.OK)


_HEALTH_RANK = {HealthState.OK: 0, HealthState.WARNING: 1, HealthState.CRITICAL: 2}


class HealthCheck(msgspec.Struct, frozen=True, gc=False):
    name: str
    state: HealthState
    message: str = ""


class Versions(msgspec.Struct, frozen=True, gc=False):
    libvirt: str = ""
    qemu: str = ""
    agent: str = ""


class VmState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    OTHER = "other"


class VmInfo(msgspec.Struct, frozen=True, gc=False):
    name: VmName
    uuid: str = ""
    vcpus: NonNegative = 0
    memory_mib: NonNegative = 0
    state: VmState = VmState.RUNNING
    persistent: bool = True
    # What its interfaces need on whichever host runs it (placement checks hosts against it).
    attachments: list[Attachment] = []
    # A digest of its persistent definition: the coordinator keeps a copy of the
    # definition (to restart it if the host dies) and fetches it again when this changes.
    definition: Annotated[str, msgspec.Meta(max_length=64)] = ""


class UnreadableVm(msgspec.Struct, frozen=True, gc=False):
    """A domain the agent could not describe: reported so nobody wonders where it went."""

    # As the hypervisor names it, cut to a length any peer accepts.
    name: Annotated[str, msgspec.Meta(max_length=VM_NAME_MAX + 1)]
    reason: Annotated[str, msgspec.Meta(max_length=1000)]


class Capacity(msgspec.Struct, frozen=True, gc=False):
    cpus: NonNegative
    memory_total_mib: NonNegative
    memory_free_mib: NonNegative
    # Sums over the running VMs: what placement reserves against.
    vcpus_used: NonNegative = 0
    memory_used_mib: NonNegative = 0


class HostStatus(msgspec.Struct, frozen=True, gc=False, tag="status"):
    host: HostName
    # Increases by one per heartbeat of one agent process; `boot_id` changes
    # when the agent restarts, so a lower seq from a new boot is not stale.
    seq: NonNegative
    boot_id: str
    sent_at: float
    interval: Seconds
    capacity: Capacity
    health: HealthState = HealthState.OK
    checks: list[HealthCheck] = []
    vms: list[VmInfo] = []
    versions: Versions = Versions()
    host_uuid: str = ""
    cpu_model: str = ""
    arch: str = ""
    backend: str = ""
    # How other hosts' hypervisors reach this one for peer-to-peer migration.
    peer_uri: str = ""
    migration_address: str = ""
    migrations_in_flight: NonNegative = 0
    # Domains the agent could not describe (left out of `vms`).
    unreadable_vms: list[UnreadableVm] = []
    # What the host offers VMs' interfaces; None from agents that do not report it
    # (placement then leaves the check to the destination's prepare).
    networks: HostNetworks | None = None
    # The report's content in short (`report_digest`): a HostBeat naming it says
    # nothing has changed since. "" from agents that send full reports only.
    digest: Annotated[str, msgspec.Meta(max_length=64)] = ""
    # Whether this agent sends HostBeats between full reports (once a coordinator asked).
    short_beats: bool = False

    def content_key(self) -> tuple:
        """Everything but the clock-driven fields: a change here triggers a heartbeat now."""
        return (
            self.capacity.cpus,
            self.capacity.memory_total_mib,
            self.capacity.vcpus_used,
            self.capacity.memory_used_mib,
            self.health,
            tuple(self.checks),
            tuple(self.vms),
            self.versions,
            self.migrations_in_flight,
            tuple(self.unreadable_vms),
            self.networks,
        )


    def digest_key(self) -> tuple:
        """What a full report says that a HostBeat vouches for: the content, free
        memory to the GiB, and the host's fixed facts."""
        return (
            *self.content_key(),
            self.capacity.memory_free_mib // 1024,
            self.interval,
            self.host_uuid,
            self.cpu_model,
            self.arch,
            self.backend,
            self.peer_uri,
            self.migration_address,
        )


def report_digest(status: HostStatus) -> str:
    return hashlib.blake2b(msgspec.json.encode(status.digest_key()), digest_size=12).hexdigest()


class HostBeat(msgspec.Struct, frozen=True, gc=False, tag="beat"):
    """The short heartbeat: the agent is alive, and its report is still the one
    whose digest this names. Sent between full reports once a coordinator asked
    for them (ReportRequest): at 5,000 hosts the coordinator then decodes a few
    dozen bytes per heartbeat instead of a few kilobytes."""

    host: HostName
    seq: NonNegative
    boot_id: Annotated[str, msgspec.Meta(max_length=64)]
    sent_at: float
    interval: Seconds
    digest: Annotated[str, msgspec.Meta(max_length=64)]


class ReportRequest(msgspec.Struct, frozen=True):
    """`ferry.agent.<host>.report`, from a coordinator: send a full report now.
    It also says the coordinator understands HostBeats."""

    short_beats: bool = True


class _LenientStatus(HostStatus, frozen=True, tag="status"):
    """The heartbeat with its VM entries left undecoded, to judge them one by one."""

    vms: list[msgspec.Raw] = []  # type: ignore[assignment]


class _VmEntryName(msgspec.Struct):
    name: str = ""


class StatusDecoder:
    """Decodes heartbeats so that one bad VM entry never costs the whole host.

    A heartbeat that decodes whole (the usual case) costs one decode. Otherwise
    each VM entry is decoded on its own: the entries that fail are dropped, each
    with a sentence naming it, and the host keeps its other VMs. A heartbeat
    whose own fields are wrong is refused (FerryError bad_request).
    """

    def __init__(self) -> None:
        self._whole = Decoder(HostStatus | HostBeat, "host status")
        self._lenient = Decoder(_LenientStatus, "host status")
        self._entry = msgspec.json.Decoder(VmInfo)
        self._entry_name = msgspec.json.Decoder(_VmEntryName)

    def decode(self, data: bytes) -> tuple[HostStatus | HostBeat, list[str]]:
        """The heartbeat (a full report or a short beat) and a sentence per VM entry that was dropped."""
        try:
            return self._whole.decode(data), []
        except FerryError:
            lenient = self._lenient.decode(data)  # raises for errors outside the VM entries
        vms, rejected = [], []
        for index, raw in enumerate(lenient.vms):
            try:
                vms.append(self._entry.decode(raw))
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                rejected.append(self._rejection(index, raw, exc))
        fields = {f: getattr(lenient, f) for f in lenient.__struct_fields__ if f != "vms"}
        return HostStatus(**fields, vms=vms), rejected

    def _rejection(self, index: int, raw: msgspec.Raw, error: Exception) -> str:
        try:
            name = self._entry_name.decode(raw).name
        except (msgspec.ValidationError, msgspec.DecodeError):
            name = ""
        label = f" ({name[:80]!r})" if name else ""
        if name and (problem := vm_name_problem(name)) is not None:
            why = problem
        elif isinstance(error, msgspec.ValidationError):
            why = readable(error)
        else:
            why = str(error)
        return f"VM entry {index}{label} was dropped: {why}"


@functools.lru_cache(maxsize=4096)
def version_tuple(version: str, width: int = 3) -> tuple[int, ...]:
    """Leading digits of each dot-separated piece: "8.2.0-rc1" -> (8, 2, 0).
    Padded with zeros to `width` pieces, so "9.0" and "9.0.0" compare equal."""
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d*", piece).group()
        parts.append(int(digits) if digits else 0)
    parts += [0] * (width - len(parts))
    return tuple(parts)
