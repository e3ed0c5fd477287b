"""Admission limits: how many migrations run at once, and how much bandwidth they share."""

from typing import Annotated

import msgspec

Count = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
BudgetMiBps = Annotated[int, msgspec.Meta(ge=0, le=1_000_000, description="MiB/s; 0 = unlimited")]


class Limits(msgspec.Struct, frozen=True):
    # Migrations admitted at once in the whole cluster (preparing, migrating or post-copy).
    cluster: Count = 5
    # Migrations leaving one host at once.
    outbound_per_host: Count = 2
    # Migrations arriving on one host at once.
    inbound_per_host: Count = 2
    # Bandwidth each host gives to migrations, in and out together, shared fairly
    # between the migrations running on it; 0 = unlimited.
    host_bandwidth_mib: BudgetMiBps = 0


class LimitsRequest(msgspec.Struct, frozen=True):
    """Empty: read the limits. Any field set: change it. `reset`: back to the config file."""

    cluster: Count | None = None
    outbound_per_host: Count | None = None
    inbound_per_host: Count | None = None
    host_bandwidth_mib: BudgetMiBps | None = None
    reset: bool = False


class LimitsReply(msgspec.Struct, frozen=True, tag="limits"):
    limits: Limits
    # "config" while the config file's values apply, "runtime" after a change through the API.
    source: str = "config"


def apply(limits: Limits, request: LimitsRequest) -> Limits:
    changes = {
        field: getattr(request, field)
        for field in ("cluster", "outbound_per_host", "inbound_per_host", "host_bandwidth_mib")
        if getattr(request, field) is not None
    }
    return msgspec.structs.replace(limits, **changes)
