"""TOML config files decoded into typed Structs, with errors a person can act on.

Config files are strict where wire messages are lenient: an unknown key is an
error (a typo'd key silently keeping its default is how a host ends up
misconfigured), and every unknown key is named, with the closest known one.
Wire messages keep ignoring unknown fields so mixed versions still talk.
"""

import difflib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

from ferry.proto.codec import readable
from ferry.runtime.identity import read_identity

T = TypeVar("T")


class ConfigError(Exception):
    """A config file that cannot be used; `problems` says each thing that is wrong."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__(f"config file {path}: " + "; ".join(problems))


class NatsSettings(msgspec.Struct, frozen=True):
    servers: list[str] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    # One of: a Ferry identity file (`ferry-admin identities`: an nkey with its
    # name and role), a creds file (JWT + nkey), user/password, or a token.
    identity: str = ""
    creds: str = ""
    user: str = ""
    password: str = ""
    token: str = ""
    # TLS towards the server (CA to trust, and a client certificate if the server asks).
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    connect_timeout: float = 2.0
    reconnect_wait: float = 1.0
    request_timeout: float = 5.0


# A path in [nats] that starts with this names a systemd credential: the unit loads
# the file (LoadCredential=NAME:/etc/ferry/credentials/NAME) into a folder only the
# service can read, and sets $CREDENTIALS_DIRECTORY to it. The config spells the
# variable as systemd's documentation does; the daemon resolves it at start, so the
# secrets never sit where the (unprivileged) service could read anything else.
CREDENTIALS_PREFIX = "${CREDENTIALS_DIRECTORY}/"
CREDENTIAL_KEYS = ("identity", "creds", "tls_ca", "tls_cert", "tls_key")
# What systemd accepts as a credential's name: one file name, never '.' or '..'.
_CREDENTIAL_NAME = re.compile(r"^(?!\.{1,2}\Z)[^/\x00]{1,255}\Z")


def credential_name(path: str) -> str | None:
    """The credential `path` names (`${CREDENTIALS_DIRECTORY}/NAME`), or None when it names none."""
    return path[len(CREDENTIALS_PREFIX):] if path.startswith(CREDENTIALS_PREFIX) else None


def resolve_credentials(nats: NatsSettings, directory: str | None) -> NatsSettings:
    """`nats` with each credential path under `directory` ($CREDENTIALS_DIRECTORY).
    Without a directory, or with a name that is no file name, the path is left as
    written: `nats_problems` then says why it cannot be used."""
    if not directory:
        return nats
    changes = {
        key: os.path.join(directory, name)
        for key in CREDENTIAL_KEYS
        if (name := credential_name(getattr(nats, key))) is not None and _CREDENTIAL_NAME.match(name)
    }
    return msgspec.structs.replace(nats, **changes) if changes else nats


def with_credentials(config: T, directory: str | None) -> T:
    """`config` with the credential paths of its [nats] section resolved (a config without one is returned as is)."""
    nats = getattr(config, "nats", None)
    if not isinstance(nats, NatsSettings):
        return config
    return msgspec.structs.replace(config, nats=resolve_credentials(nats, directory))  # type: ignore[type-var]


def read_config(path: str | Path, type_: type[T]) -> tuple[T | None, list[str]]:
    """The file decoded as `type_` (None when it cannot be), and every problem found:
    each unknown key, or the first value of the wrong type (msgspec stops at the first)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, [f"cannot read it: {exc.strerror}"]
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        return None, [f"not valid TOML: {exc}"]
    problems = unknown_keys(raw, type_)
    try:
        config = msgspec.convert(raw, type_)
    except msgspec.ValidationError as exc:
        return None, [*problems, readable(exc)]
    return config, problems


def load_toml(path: str | Path, type_: type[T]) -> T:
    """The file decoded as `type_`; ConfigError with every problem read_config found."""
    config, problems = read_config(path, type_)
    if problems or config is None:
        raise ConfigError(path, problems)
    return config


def unknown_keys(data: Any, type_: Any) -> list[str]:
    """Every key in `data` that the Struct `type_` (and the Structs inside it) does not know."""
    return _unknown(data, mi.type_info(type_), "")


def _unknown(data: Any, info: mi.Type, path: str) -> list[str]:
    if isinstance(info, mi.StructType) and isinstance(data, dict):
        fields = {f.encode_name: f for f in info.fields}
        found = []
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            field = fields.get(key)
            if field is None:
                close = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f" (did you mean {path + '.' if path else ''}{close[0]}?)" if close else ""
                found.append(f"unknown key {where}{hint}")
            else:
                found += _unknown(value, field.type, where)
        return found
    if isinstance(info, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)) and isinstance(data, list):
        return [p for i, item in enumerate(data) for p in _unknown(item, info.item_type, f"{path}[{i}]")]
    if isinstance(info, mi.DictType) and isinstance(data, dict):
        return [p for key, value in data.items() for p in _unknown(value, info.value_type, f"{path}.{key}")]
    if isinstance(info, mi.UnionType):
        structs = [t for t in info.types if isinstance(t, mi.StructType)]
        if len(structs) == 1:
            return _unknown(data, structs[0], path)
    return []


def file_problem(key: str, path: str, *, folder: bool = False) -> str | None:
    """Why the file (or folder) a config key names cannot be used; None when it can."""
    if not path:
        return None
    what = "folder" if folder else "file"
    if not os.path.exists(path):
        return f"{key}: the {what} {path} does not exist"
    if folder and not os.path.isdir(path):
        return f"{key}: {path} is not a folder"
    if not folder and os.path.isdir(path):
        return f"{key}: {path} is a folder, not a file"
    if not os.access(path, os.R_OK):
        return f"{key}: {path} cannot be read by this user"
    return None


def config_key(key: str) -> str:
    return f"nats.{key}"


def nats_problems(nats: NatsSettings, name: Callable[[str], str] = config_key) -> list[str]:
    """Files the [nats] section names that are missing, and settings that cannot work
    together; `name` says how a setting is called where it came from (a config key,
    a command-line flag)."""
    unresolved = [p for key in CREDENTIAL_KEYS if (p := _credential_problem(name(key), getattr(nats, key))) is not None]
    if unresolved:
        # The files cannot be checked before they are found.
        return unresolved
    problems = [
        p
        for key in ("creds", "tls_ca", "tls_cert", "tls_key")
        if (p := file_problem(name(key), getattr(nats, key))) is not None
    ]
    if nats.identity:
        if (p := file_problem(name("identity"), nats.identity)) is not None:
            problems.append(p)
        else:
            try:
                read_identity(nats.identity)
            except ValueError as exc:
                problems.append(f"{name('identity')}: {exc}")
    if nats.tls_key and not nats.tls_cert:
        problems.append(f"{name('tls_key')} is set without {name('tls_cert')}")
    if sum(bool(x) for x in (nats.identity, nats.creds, nats.user, nats.token)) > 1:
        problems.append("nats: use one of identity, creds, user/password or token, not several")
    if not nats.servers:
        problems.append(f"{name('servers')} is empty")
    return problems


def _credential_problem(key: str, path: str) -> str | None:
    """Why a credential path was left unresolved (see `resolve_credentials`)."""
    credential = credential_name(path)
    if credential is None:
        return None
    if not _CREDENTIAL_NAME.match(credential):
        return f"{key}: {path} must name one credential, a plain file name as LoadCredential= gives it"
    return (
        f"{key} is {path}, a systemd credential, but CREDENTIALS_DIRECTORY is not set: start the daemon from its"
        " unit (LoadCredential=), or set CREDENTIALS_DIRECTORY to the folder that holds the credentials"
    )
