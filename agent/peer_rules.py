"""What a source agent lets a migration use on the wire. Pure.

A migrate request names the libvirt peer URI the source's libvirtd dials and
whether QEMU's stream is encrypted. Both reach the agent from the bus, so both
are judged against the agent's own config before libvirt sees them:

1. An unencrypted stream is refused (`tls_required`) while
   `migration.require_tls` is true: guest memory holds keys and passwords.
2. A peer URI whose scheme is not in `migration.allowed_peer_schemes` is
   refused (`peer_refused`). `qemu+tls` authenticates both libvirtds by
   certificate; `qemu+tcp` is usually neither encrypted nor authenticated, and
   `qemu+ssh` trusts ssh keys instead: an operator adds those on purpose.
3. A `qemu+tls` URI that turns certificate checks off (`no_verify=1`) is
   refused too: it would hand the VM to whoever answers at that address.
"""

from urllib.parse import parse_qsl, urlsplit

from ferry.proto.agent import MigrateRequest
from ferry.proto.errors import ErrorCode, FerryError

# What `allowed_peer_schemes` holds unless the operator says otherwise.
DEFAULT_PEER_SCHEMES = ("qemu+tls",)


def peer_scheme(uri: str) -> str:
    """The URI's scheme, lower case ("" when it has none)."""
    try:
        return urlsplit(uri.strip()).scheme.lower()
    except ValueError:
        return ""


def peer_uri_problem(uri: str, allowed: list[str] | tuple[str, ...]) -> str | None:
    """Why a source with `allowed` schemes would not dial `uri`, as a sentence; None when it would."""
    scheme = peer_scheme(uri)
    if not scheme:
        return "it is not a libvirt URI (it has no scheme)"
    if scheme not in allowed:
        return (
            f"its scheme {scheme} is not one of the allowed peer schemes ({', '.join(allowed) or 'none'}); "
            "an operator who means it adds the scheme to allowed_peer_schemes in the [migration] table "
            "of agent.toml"
        )
    try:
        query = parse_qsl(urlsplit(uri.strip()).query)
    except ValueError:
        return "it is not a libvirt URI"
    if any(key == "no_verify" and value not in ("", "0") for key, value in query):
        return "it turns off the check of the peer's certificate (no_verify)"
    return None


def migrate_refusal(request: MigrateRequest, *, require_tls: bool, allowed_schemes: list[str]) -> FerryError | None:
    """The error a source answers `request` with, or None when it may run."""
    if require_tls and not request.options.tls:
        return FerryError(
            ErrorCode.TLS_REQUIRED,
            f"{request.vm} is not migrated without TLS: this agent requires an encrypted migration stream; "
            "to allow plain migrations on a trusted network set require_tls = false in the [migration] "
            "table of its agent.toml",
        )
    problem = peer_uri_problem(request.peer_uri, allowed_schemes)
    if problem is not None:
        return FerryError(
            ErrorCode.PEER_REFUSED,
            f"{request.vm} is not sent to {request.peer_uri}: {problem}",
        )
    return None
