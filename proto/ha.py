"""High availability: which VMs are restarted elsewhere when their host dies, and first.

A VM's HA priority is kept in JetStream KV (`ferry ha set`), so it outlives
the host and the coordinator that wrote it. VMs without a policy of their own
follow the cluster default (`ferry ha default`), which is `off` until an
operator says otherwise: nothing is restarted that nobody asked for.
"""

import enum
from typing import Annotated

import msgspec

from ferry.proto.names import HostName, VmName


class HaPriority(enum.StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    # Never restarted elsewhere: reported when its host dies.
    OFF = "off"


class HaPolicy(msgspec.Struct, frozen=True):
    """A VM's policy (`vm` empty: the cluster default), who set it and when (wall clock)."""

    priority: HaPriority
    vm: str = ""
    by: str = ""
    at: float = 0.0
    # In a reply: the VM has no policy of its own, this is the default's.
    from_default: bool = False


class HaSetRequest(msgspec.Struct, frozen=True):
    """`ferry ha set VM --priority P`."""

    vm: VmName
    priority: HaPriority


class HaDefaultRequest(msgspec.Struct, frozen=True):
    """`ferry ha default P`: the priority of every VM without a policy of its own."""

    priority: HaPriority


class HaRequest(msgspec.Struct, frozen=True):
    """The policies of these VMs (none named: every policy set)."""

    vms: Annotated[list[VmName], msgspec.Meta(max_length=1000)] = []


class HaReply(msgspec.Struct, frozen=True, tag="ha"):
    default: HaPolicy
    # By VM name. Named in the request and without a policy of its own: the default, with its vm filled in.
    policies: list[HaPolicy] = []
    # The write changed nothing (the same priority was already set).
    changed: bool = True


class FenceState(enum.StrEnum):
    # Its fence device confirmed it off.
    FENCED = "fenced"
    # An operator checked by hand and said so (`ferry host confirm-dead`).
    CONFIRMED_DEAD = "confirmed_dead"
    # Not fenced: no device, the device failed, or the cluster looked partitioned.
    FAILED = "failed"

    @property
    def dead(self) -> bool:
        """Whether its VMs may be started elsewhere."""
        return self in (FenceState.FENCED, FenceState.CONFIRMED_DEAD)


class FenceRecord(msgspec.Struct, frozen=True):
    """The last word on a lost host's power, kept in KV (bucket ferry_fences)."""

    host: str
    state: FenceState
    reason: str
    # The fence agent, or the operator identity that confirmed.
    by: str = ""
    at: float = 0.0
    seconds: float = 0.0


class ConfirmDeadRequest(msgspec.Struct, frozen=True):
    """`ferry host confirm-dead HOST`: the operator checked that the host is off."""

    host: HostName
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class FenceReply(msgspec.Struct, frozen=True, tag="fence"):
    record: FenceRecord
