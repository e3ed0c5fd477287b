"""coordinator.toml"""

from typing import Annotated

import msgspec

from runtime.config import NatsSettings


class CoordinatorConfig(msgspec.Struct, frozen=True):
    # Seconds of silence after which a host is `lost`; 0 means
    # `heartbeat_timeout_factor` times the interval the host announces.
    heartbeat_timeout: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    heartbeat_timeout_factor: Annotated[float, msgspec.Meta(gt=1)] = 3.0
    # After the coordinator reconnects to NATS, no host is declared lost for this
    # many seconds: the agents need time to reconnect too.
    reconnect_grace: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    # Seconds to wait for an agent's answer to one request (prepare may take longer).
    agent_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    log_level: str = "info"
    nats: NatsSettings = NatsSettings()
