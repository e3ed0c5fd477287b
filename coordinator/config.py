"""coordinator.toml"""

import re
from typing import Annotated

import msgspec

from ferry.coordinator.fencing import DEFAULT_FENCE_DIRS, FenceDevice, device_problem, find_agent
from ferry.proto.limits import Limits
from ferry.runtime.config import NatsSettings, nats_problems
from ferry.runtime.metrics import address_problem

# A coordinator's name is a KV key token (`member.<name>`) and shows in logs.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


class DrainSettings(msgspec.Struct, frozen=True):
    # Sessions started for one VM before the drain gives it up.
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    # Pause before a retry, times the number of attempts made (a destination
    # that just failed is often busy for a moment).
    retry_delay: Annotated[float, msgspec.Meta(ge=0)] = 5.0


class EvacuationSettings(msgspec.Struct, frozen=True):
    # Drain a host automatically when its health stays CRITICAL this long.
    enabled: bool = True
    # Long enough to ride out a probe that flaps, short enough to empty a host
    # that is really failing while it still can.
    debounce_seconds: Annotated[float, msgspec.Meta(ge=0)] = 10.0


class FencingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Power a lost host off through its fence device when its peers cannot reach
    # its libvirtd (coordinator/host_death.py); only a confirmed off counts.
    enabled: bool = True
    # Where fence agents are looked up (a device names a program, never a path).
    agent_dirs: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_FENCE_DIRS))
    # Host name -> how it is powered off: [fencing.devices."hv1"] agent = "fence_ipmilan",
    # options = { ip = "10.0.0.9", username = "admin", password = "...", lanplus = "1" }.
    devices: dict[str, FenceDevice] = {}
    # More lost hosts at once than this share of the cluster looks like the
    # coordinator's own network, not dead hosts: none of them is fenced.
    max_lost_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5


class LeaderSettings(msgspec.Struct, frozen=True):
    # The leader renews its lease this often.
    renew_every: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    # A standby takes over when it has seen no renewal for this long. The
    # leader steps down after `step_down_after` without one, well before.
    lease_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 4.0
    step_down_after: Annotated[float, msgspec.Meta(gt=0, le=300)] = 2.5


class HistorySettings(msgspec.Struct, frozen=True):
    # Events (`ferry events`) are kept this long (seconds; 7 days), and the stream
    # at most this big (bytes; 0: no cap beyond the age): the oldest go first.
    events_max_age: Annotated[float, msgspec.Meta(ge=60, le=366 * 86400)] = 7 * 86400.0
    events_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1 << 30
    # A session that ended this long ago (seconds) leaves the hot bucket for the
    # archive stream; `ferry session ID` and `ferry sessions` still find it there.
    keep_finished: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 3600.0
    # How often the leader looks for sessions to archive (seconds).
    archive_every: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    # Archived sessions are kept this long (seconds; 90 days), and the archive at most
    # this big (bytes; 0: no cap beyond the age).
    archive_max_age: Annotated[float, msgspec.Meta(ge=60, le=3660 * 86400)] = 90 * 86400.0
    archive_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0


class CoordinatorConfig(msgspec.Struct, frozen=True):
    # How this coordinator is called in the leader lease, `ferry status` and
    # the logs; "" means the machine's host name. Give each of several
    # coordinators on one machine its own.
    name: str = ""
    # Seconds of silence after which a host is `lost`; 0 means
    # `heartbeat_timeout_factor` times the interval the host announces.
    heartbeat_timeout: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    heartbeat_timeout_factor: Annotated[float, msgspec.Meta(gt=1)] = 3.0
    # After the coordinator reconnects to NATS, no host is declared lost for this
    # many seconds: the agents need time to reconnect too.
    reconnect_grace: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    # Seconds to wait for an agent's answer to one request (prepare may take longer).
    agent_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # At start the coordinator listens to one round of heartbeats before it adopts
    # sessions and schedules (so no session fails for a source not heard yet):
    # the longest interval hosts announce, but never longer than this.
    warm_up_max: Annotated[float, msgspec.Meta(ge=0, le=300)] = 10.0
    # Copies of every KV bucket: 0 means one per server of the NATS cluster
    # (three on three servers, at most five); buckets with fewer are scaled up.
    kv_replicas: Annotated[int, msgspec.Meta(ge=0, le=5)] = 0
    log_level: str = "info"
    # Where /metrics (Prometheus) listens, "HOST:PORT"; "" turns it off. Loopback by
    # default: the operator opens it to Prometheus deliberately (it names hosts and VMs).
    metrics_address: str = "127.0.0.1:9464"
    nats: NatsSettings = NatsSettings()
    # The starting limits; `ferry limits` changes them at runtime (kept in KV).
    limits: Limits = Limits()
    drain: DrainSettings = DrainSettings()
    evacuation: EvacuationSettings = EvacuationSettings()
    leader: LeaderSettings = LeaderSettings()
    history: HistorySettings = HistorySettings()
    fencing: FencingSettings = FencingSettings()


def problems(config: CoordinatorConfig) -> list[str]:
    """What keeps this config from working beyond its keys and values (files it names)."""
    problems = nats_problems(config.nats)
    if (problem := address_problem("metrics_address", config.metrics_address)) is not None:
        problems.append(problem)
    if config.name and not NAME.match(config.name):
        problems.append(
            f"name {config.name!r}: use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)"
        )
    if config.leader.step_down_after >= config.leader.lease_seconds:
        problems.append(
            "leader.step_down_after must be shorter than leader.lease_seconds: a leader that cannot renew "
            "must stop before a standby may take over"
        )
    if config.leader.renew_every >= config.leader.step_down_after:
        problems.append("leader.renew_every must be shorter than leader.step_down_after")
    dirs = tuple(config.fencing.agent_dirs)
    for host, device in sorted(config.fencing.devices.items()):
        problem = device_problem(device)
        if problem is None and find_agent(device.agent, dirs) is None:
            problem = f"fence agent {device.agent} is not installed in {', '.join(dirs)}"
        if problem is not None:
            problems.append(f"fencing.devices.{host}: {problem}")
    return problems
