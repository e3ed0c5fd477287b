"""TOML config files decoded into typed Structs, with errors a person can act on."""

from pathlib import Path
from typing import TypeVar

import msgspec

T = TypeVar("T")


class ConfigError(Exception):
    """A config file that cannot be used; the message says which file and why."""


class NatsSettings(msgspec.Struct, frozen=True):
    servers: list[str] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    # One of: a creds file (JWT + nkey), user/password, or a token.
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


def load_toml(path: str | Path, type_: type[T]) -> T:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        return msgspec.toml.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config file {path} is invalid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
