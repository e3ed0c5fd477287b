"""Subject names. Everything an agent publishes is under its own host's token
(proto/names.py: the host name with '.' as '_'), so one NATS permission per
host pins an agent to its own subjects. VM names never appear in a subject."""

from ferry.proto.names import HostName, host_token

PREFIX = "ferry"

ALL_HOST_STATUS = f"{PREFIX}.host.*.status"
ALL_HOST_EVENTS = f"{PREFIX}.host.*.event"
ALL_HOST_SESSIONS = f"{PREFIX}.host.*.session.*"
COORDINATOR_EVENTS = f"{PREFIX}.coordinator.event"


def host_status(host: HostName) -> str:
    return f"{PREFIX}.host.{host_token(host)}.status"


def host_event(host: HostName) -> str:
    return f"{PREFIX}.host.{host_token(host)}.event"


def host_session(host: HostName, session_id: str) -> str:
    return f"{PREFIX}.host.{host_token(host)}.session.{session_id}"


def agent_prefix(host: HostName) -> str:
    return f"{PREFIX}.agent.{host_token(host)}"


def agent_verb(host: HostName, verb: str) -> str:
    return f"{agent_prefix(host)}.{verb}"


# The API's verbs. A viewer may send only the read verbs; `limits` reads, `set_limits` changes.
READ_VERBS = ("hosts", "sessions", "session", "drains", "status", "limits", "events", "ha", "restarts")
WRITE_VERBS = (
    "migrate", "plan", "cancel", "bandwidth", "drain", "undrain", "set_limits",
    "cordon", "uncordon", "force_complete", "downtime", "ha_set", "ha_default",
    "confirm_dead",
)
# Who asks is the subject's token after `ferry.api` (the caller's identity name,
# which NATS lets only that identity publish under once permissions are on).
CALLER = "*"


def api(verb: str, *, caller: str) -> str:
    """`ferry.api.<caller>.<verb>`; CALLER for a coordinator that serves every caller."""
    return f"{PREFIX}.api.{caller}.{verb}"


def via_api(coordinator: str, verb: str, *, caller: str) -> str:
    """The API through one named coordinator (`ferry --via NAME`), rather than
    whichever NATS hands the request to."""
    return f"{PREFIX}.api.{caller}.via.{coordinator.replace('.', '_')}.{verb}"


def leader_api(verb: str, *, caller: str) -> str:
    """Where the leader alone answers the verbs that change things: a standby that
    gets one forwards it here, with the caller's token it came in under."""
    return f"{PREFIX}.coordinator.leader.{caller}.{verb}"


def caller_of(subject: str) -> str:
    """The caller token of an API or leader subject ("" for anything else)."""
    parts = subject.split(".")
    if len(parts) >= 4 and parts[0] == PREFIX and parts[1] == "api":
        return parts[2]
    if len(parts) >= 5 and parts[0] == PREFIX and parts[1] == "coordinator" and parts[2] == "leader":
        return parts[3]
    return ""


def token_from_subject(subject: str) -> str | None:
    """`ferry.host.hv1_example_com.status` -> `hv1_example_com`; None for anything else."""
    parts = subject.split(".")
    if len(parts) >= 4 and parts[0] == PREFIX and parts[1] == "host":
        return parts[2]
    return None


def speaks_for(subject: str, host: HostName) -> bool:
    """Whether a message on `subject` may speak for `host`: it came in under that host's token."""
    return token_from_subject(subject) == host_token(host)
