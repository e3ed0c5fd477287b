"""Where the `ferry` CLI finds its connection: config files, environment, flags.

Sources, each later one overriding the earlier ones key by key:

1. /etc/ferry/ferry.toml (for every user of the machine)
2. $XDG_CONFIG_HOME/ferry/ferry.toml, by default ~/.config/ferry/ferry.toml
   (`--config FILE` or $FERRY_CONFIG names a file read instead of these two)
3. the FERRY_* environment variables (ENV_KEYS)
4. the command-line flags

A default file that does not exist is skipped; a named one must exist. Keys are
strict (runtime/config.py): a typo is an error naming the file, not a silent
default. Paths in a file are relative to that file's folder.

Deciding is pure (`config_files`, `env_layer`, `merge`, `resolve`); `load`
reads the files. A problem names the setting as its source calls it
(`--creds`, `$FERRY_NATS_CREDS`, `<file>: creds`).
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import UNSET, UnsetType

from ferry.proto.errors import ErrorCode, FerryError
from ferry.runtime.config import NatsSettings, nats_problems, read_config

SYSTEM_FILE = Path("/etc/ferry/ferry.toml")
DEFAULT_SERVER = "nats://127.0.0.1:4222"
DEFAULT_TIMEOUT = 5.0
PATH_KEYS = ("identity", "creds", "tls_ca", "tls_cert", "tls_key")
# Environment variable -> key. The NATS ones keep the names daemons' docs use.
ENV_KEYS = {
    "FERRY_NATS_URL": "servers",
    "FERRY_IDENTITY": "identity",
    "FERRY_NATS_CREDS": "creds",
    "FERRY_NATS_TLS_CA": "tls_ca",
    "FERRY_NATS_TLS_CERT": "tls_cert",
    "FERRY_NATS_TLS_KEY": "tls_key",
    "FERRY_TIMEOUT": "timeout",
    "FERRY_VIA": "via",
}

FLAGS = "flags"
ENVIRONMENT = "environment"
_FLAG_NAMES = {"servers": "--server"}
_ENV_NAMES = {key: name for name, key in ENV_KEYS.items()}

Timeout = Annotated[float, msgspec.Meta(gt=0)]


class ClientLayer(msgspec.Struct, frozen=True):
    """What one source says; a key it does not set is UNSET (a config file's shape)."""

    servers: list[str] | UnsetType = UNSET
    identity: str | UnsetType = UNSET
    creds: str | UnsetType = UNSET
    tls_ca: str | UnsetType = UNSET
    tls_cert: str | UnsetType = UNSET
    tls_key: str | UnsetType = UNSET
    # Seconds to wait for the coordinator's answer.
    timeout: Timeout | UnsetType = UNSET
    # Send every request through this coordinator.
    via: str | UnsetType = UNSET


class Source(msgspec.Struct, frozen=True):
    """A layer and where it came from: FLAGS, ENVIRONMENT, or a config file's path."""

    origin: str
    layer: ClientLayer


class Merged(msgspec.Struct, frozen=True):
    layer: ClientLayer
    # Each key that is set: its name where its value came from.
    names: dict[str, str] = {}


class ClientSettings(msgspec.Struct, frozen=True):
    nats: NatsSettings
    via: str = ""


class ConfigFile(msgspec.Struct, frozen=True):
    path: str
    # A file the user named must exist; a default one may not.
    required: bool


def config_files(environ: Mapping[str, str], home: str, named: str | None = None) -> list[ConfigFile]:
    """The files to read, first to last; `named`: the --config flag."""
    chosen = named or environ.get("FERRY_CONFIG", "")
    if chosen:
        return [ConfigFile(chosen, required=True)]
    folder = environ.get("XDG_CONFIG_HOME", "") or os.path.join(home, ".config")
    return [ConfigFile(str(SYSTEM_FILE), required=False), ConfigFile(os.path.join(folder, "ferry", "ferry.toml"), required=False)]


def split_urls(values: list[str]) -> list[str]:
    """Each value may list several URLs joined by commas (the lab prints its servers so)."""
    return [url.strip() for value in values for url in value.split(",") if url.strip()]


def env_layer(environ: Mapping[str, str]) -> ClientLayer:
    """The FERRY_* variables that are set and not empty."""
    values: dict = {}
    for name, key in ENV_KEYS.items():
        value = environ.get(name, "")
        if not value:
            continue
        if key == "servers":
            values[key] = split_urls([value])
        elif key == "timeout":
            values[key] = _seconds(name, value)
        else:
            values[key] = value
    return ClientLayer(**values)


def _seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise FerryError(ErrorCode.BAD_REQUEST, f"${name}: {value!r} is not a number of seconds above 0")
    return seconds


def anchored(layer: ClientLayer, folder: str) -> ClientLayer:
    """A file's relative paths taken from the file's folder (and `~` as the home)."""
    changes = {}
    for key in PATH_KEYS:
        value = getattr(layer, key)
        if isinstance(value, str) and value:
            path = os.path.expanduser(value)
            changes[key] = path if os.path.isabs(path) else os.path.join(folder, path)
    return msgspec.structs.replace(layer, **changes)


def setting_name(origin: str, key: str) -> str:
    """How a source calls a key: `--tls-ca`, `$FERRY_NATS_TLS_CA`, `/etc/ferry/ferry.toml: tls_ca`."""
    if origin == FLAGS:
        return _FLAG_NAMES.get(key, "--" + key.replace("_", "-"))
    if origin == ENVIRONMENT:
        return "$" + _ENV_NAMES[key]
    return f"{origin}: {key}"


def merge(sources: list[Source]) -> Merged:
    """The layers in order, each set key of a later one replacing the earlier value."""
    values: dict = {}
    names: dict[str, str] = {}
    for source in sources:
        for key in source.layer.__struct_fields__:
            value = getattr(source.layer, key)
            if value is not UNSET:
                values[key] = value
                names[key] = setting_name(source.origin, key)
    return Merged(ClientLayer(**values), names)


def resolve(merged: Merged) -> ClientSettings:
    """Settings with every default filled in; FerryError(bad_request) when they cannot work."""
    layer = merged.layer

    def given(key: str, default):
        value = getattr(layer, key)
        return default if value is UNSET else value

    nats = NatsSettings(
        servers=split_urls(given("servers", [DEFAULT_SERVER])),
        **{key: given(key, "") for key in PATH_KEYS},
        request_timeout=given("timeout", DEFAULT_TIMEOUT),
    )
    problems = nats_problems(nats, name=lambda key: merged.names.get(key, key))
    if problems:
        raise FerryError(ErrorCode.BAD_REQUEST, "; ".join(problems))
    return ClientSettings(nats=nats, via=given("via", ""))


def read_layer(path: str) -> ClientLayer:
    """One config file; FerryError(bad_request) `<file>: <problem>` when it cannot be used."""
    layer, problems = read_config(path, ClientLayer)
    if problems or layer is None:
        raise FerryError(ErrorCode.BAD_REQUEST, f"{path}: {'; '.join(problems)}")
    return anchored(layer, os.path.dirname(os.path.abspath(path)))


def load(flags: ClientLayer, environ: Mapping[str, str], home: str, named: str | None = None) -> ClientSettings:
    """The settings from every source, in the documented order."""
    files = [
        Source(f.path, read_layer(f.path))
        for f in config_files(environ, home, named)
        if f.required or os.path.exists(f.path)
    ]
    return resolve(merge([*files, Source(ENVIRONMENT, env_layer(environ)), Source(FLAGS, flags)]))
