"""Subject names. Everything an agent publishes is under its own host name."""

from ferry.proto.names import HostName

PREFIX = "ferry"

ALL_HOST_STATUS = f"{PREFIX}.host.*.status"
ALL_HOST_EVENTS = f"{PREFIX}.host.*.event"
ALL_HOST_SESSIONS = f"{PREFIX}.host.*.session.*"
COORDINATOR_EVENTS = f"{PREFIX}.coordinator.event"


def host_status(host: HostName) -> str:
    return f"{PREFIX}.host.{host}.status"


def host_event(host: HostName) -> str:
    return f"{PREFIX}.host.{host}.event"


def host_session(host: HostName, session_id: str) -> str:
    return f"{PREFIX}.host.{host}.session.{session_id}"


def agent_prefix(host: HostName) -> str:
    return f"{PREFIX}.agent.{host}"


def agent_verb(host: HostName, verb: str) -> str:
    return f"{agent_prefix(host)}.{verb}"


def api(verb: str) -> str:
    return f"{PREFIX}.api.{verb}"


def host_from_subject(subject: str) -> str | None:
    """`ferry.host.hv1.status` -> `hv1`; None for anything else."""
    parts = subject.split(".")
    if len(parts) >= 4 and parts[0] == PREFIX and parts[1] == "host":
        return parts[2]
    return None
