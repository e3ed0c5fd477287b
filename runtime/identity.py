"""A Ferry identity: one nkey per host, coordinator and operator.

An identity file (written by `ferry-admin identities`, mode 0600) holds the
name, the role and the nkey seed. NATS checks the seed (the client signs the
server's nonce with it) and applies the permissions the authorization config
gives that public key; Ferry reads the name for two things NATS then enforces:
the inbox this identity may receive replies on, and, for operators, the
subject token their API requests carry (so the coordinator records who asked
from the subject, which only that identity may publish on).
"""

import enum
import json
import os
import re
from pathlib import Path

import msgspec

from ferry.proto.names import host_name_problem, host_token


class Role(enum.StrEnum):
    HOST = "host"
    COORDINATOR = "coordinator"
    # Operators: an admin may use every verb, a viewer only the read verbs.
    ADMIN = "admin"
    VIEWER = "viewer"


# Coordinator and operator names: one subject token, readable in logs and records.
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")
# Who asked, when the client has no identity (a cluster without permissions):
# recorded as claimed, since nothing proves it.
ANONYMOUS = "anonymous"
# Tokens with a meaning of their own in Ferry's subjects.
RESERVED = frozenset({ANONYMOUS, "via", "leader"})


class IdentityFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    role: Role
    public_key: str
    seed: str


def name_problem(name: str, role: Role) -> str | None:
    """Why `name` cannot name an identity of `role`; None when it can."""
    if role == Role.HOST:
        return host_name_problem(name)
    if name in RESERVED:
        return f"{name!r} is reserved; choose another name"
    if not _NAME.match(name):
        return f"{name!r}: a {role} name is 1-63 lower-case letters, digits and '-', starting with a letter"
    return None


def token(name: str) -> str:
    """The subject token of an identity's name (host names: '.' becomes '_')."""
    return host_token(name)


def inbox_prefix(name: str) -> str:
    """Replies to this identity's requests arrive under this prefix, which only it may subscribe to."""
    return f"_INBOX.{token(name)}"


def read_identity(path: str | Path) -> IdentityFile:
    """The identity in `path`; ValueError with a sentence when it cannot be used."""
    path = Path(path)
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ValueError(f"cannot read the identity file {path}: {exc.strerror}") from None
    try:
        identity = msgspec.toml.decode(data, type=IdentityFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"{path} is not a Ferry identity file ({exc})") from None
    if mode & 0o077:
        # ssh's rule: a secret others can read is no longer this identity's alone.
        raise ValueError(f"{path} can be read by others (mode {mode & 0o777:o}); chmod 600 {path}")
    problem = name_problem(identity.name, identity.role)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return identity


def write_identity(path: Path, identity: IdentityFile) -> None:
    """Written 0600 from the start: the seed is never readable by others, not even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # JSON's quoting is valid TOML for these strings (no TOML writer needed).
    text = f"# Ferry identity of {identity.role} {identity.name}: keep it secret (it signs as this identity).\n" + "".join(
        f"{key} = {json.dumps(str(value))}\n" for key, value in msgspec.structs.asdict(identity).items()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
