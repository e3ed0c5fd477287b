"""Every decoder of Ferry's wire, found from proto/ itself, for tests that feed
them hostile bytes (unit fuzzing here, and the same list over real NATS).

A wire type is a msgspec Struct defined in a `ferry.proto` module, or one of
the tagged unions a subject family is decoded as. Requests are the types the
verbs read (names ending in `Request`, plus the few that do not): they get the
request decoder with its smaller cap, as every endpoint does."""

import msgspec

from ferry.proto import agent, api, convergence, drain, events, ha, history, host, leader, limits, network, progress, session
from ferry.proto.codec import Decoder, request_decoder
from ferry.proto.host import StatusDecoder

MODULES = (agent, api, convergence, drain, events, ha, history, host, leader, limits, network, progress, session)
# Subject families read as one tagged union.
UNIONS: dict[str, object] = {
    "SessionUpdate": agent.SessionUpdate,
    "PrepareReply": agent.PrepareReply,
    "HostEvent": events.HostEvent,
    "CoordinatorEvent": events.CoordinatorEvent,
}
# Requests of verbs whose type is not named `...Request`.
OTHER_REQUESTS = {"SessionRef": agent.SessionRef, "BandwidthChange": api.BandwidthChange}


def wire_structs() -> dict[str, type]:
    """Every public Struct defined in proto/, by name ("api.MigrateRequest": the
    agent's and the API's MigrateRequest differ)."""
    found: dict[str, type] = {}
    for module in MODULES:
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, msgspec.Struct)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found[f"{module.__name__.rsplit('.', 1)[-1]}.{name}"] = value
    return found


def request_types() -> dict[str, type]:
    types = {name: t for name, t in wire_structs().items() if name.endswith("Request")}
    types.update({f"{t.__module__.rsplit('.', 1)[-1]}.{name}": t for name, t in OTHER_REQUESTS.items()})
    return types


def request_decoders() -> dict[str, Decoder]:
    return {name: request_decoder(t, name) for name, t in request_types().items()}


def message_decoders() -> dict[str, Decoder | StatusDecoder]:
    """Everything that is not a request: heartbeats (whole and entry by entry),
    session updates, events, replies, KV records."""
    requests = request_types()
    decoders: dict[str, Decoder | StatusDecoder] = {
        name: Decoder(t, name) for name, t in wire_structs().items() if name not in requests
    }
    decoders.update({name: Decoder(t, name) for name, t in UNIONS.items()})  # type: ignore[arg-type]
    decoders["heartbeat"] = StatusDecoder()
    return decoders


def all_decoders() -> dict[str, Decoder | StatusDecoder]:
    return {**request_decoders(), **message_decoders()}
