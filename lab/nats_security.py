"""NATS secured as in production, for the lab and the tests: TLS on every client
port (a server certificate from a CA of its own) and one nkey identity per
host, coordinator and operator with the permissions `ferry-admin identities`
gives them (cli/identities.py).

One folder holds it all: `ca.pem`, `server-cert.pem`, `server-key.pem` and
`identities/` (the ferry-admin folder). Identities are added as daemons need
them; the servers then reload their authorization (`reload_needed`).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ferry.cli import admin
from ferry.cli.identities import Member
from ferry.lab.certs import issue, make_ca
from ferry.runtime.config import NatsSettings
from ferry.runtime.identity import Role

NATS_TLS_NAME = "localhost"
NATS_TLS_ADDRESS = "127.0.0.1"
# What the lab's tools and the tests act as when they ask the API.
LAB_ADMIN = "lab-admin"
LAB_VIEWER = "lab-viewer"
# Raw JetStream and agent subjects (tests, benchmarks): a coordinator's rights.
LAB_TOOLS = "lab-tools"


def lab_identities(hosts: Iterable[str], coordinators: Iterable[str]) -> list[tuple[str, Role]]:
    """Every identity a lab needs: its hosts, its coordinators and its tools."""
    return [
        *((host, Role.HOST) for host in hosts),
        *((name, Role.COORDINATOR) for name in coordinators),
        (LAB_ADMIN, Role.ADMIN), (LAB_VIEWER, Role.VIEWER), (LAB_TOOLS, Role.COORDINATOR),
    ]


def _toml(value: str) -> str:
    return json.dumps(value)


@dataclass(frozen=True)
class NatsSecurity:
    folder: Path

    @classmethod
    def create(cls, folder: Path) -> NatsSecurity:
        """The CA and the server certificate once (kept when the folder exists)."""
        security = cls(folder)
        if not (security.ca_file.exists() and security.key_file.exists() and _serves_routes(security.cert_file)):
            folder.mkdir(parents=True, exist_ok=True)
            now = datetime.datetime.now(datetime.UTC)
            ca = make_ca(now)
            # One certificate for clients and for the routes, where each server is also a TLS client.
            server = issue(ca, NATS_TLS_NAME, NATS_TLS_ADDRESS, "peer", now)
            security.key_file.write_bytes(server.key_pem)
            security.key_file.chmod(0o600)
            security.cert_file.write_bytes(server.cert_pem)
            security.ca_file.write_bytes(ca.cert_pem)
        security.identities.mkdir(parents=True, exist_ok=True)
        if not security.authorization_file.exists():
            admin.update(security.identities, [(LAB_ADMIN, Role.ADMIN)], [])
        return security

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def cert_file(self) -> Path:
        return self.folder / "server-cert.pem"

    @property
    def key_file(self) -> Path:
        return self.folder / "server-key.pem"

    @property
    def identities(self) -> Path:
        return self.folder / "identities"

    @property
    def authorization_file(self) -> Path:
        return self.identities / admin.AUTHORIZATION

    def members(self) -> list[Member]:
        return admin.read_manifest(self.identities)

    def ensure(self, wanted: Iterable[tuple[str, Role]]) -> list[Member]:
        """Make the identities not made yet; returns the new ones (reload the servers when any)."""
        have = {(m.name, m.role) for m in self.members()}
        missing = [(name, role) for name, role in wanted if (name, role) not in have]
        if not missing:
            return []
        return admin.update(self.identities, missing, [])[1]

    def identity_file(self, name: str, role: Role) -> Path:
        return admin.identity_path(self.identities, Member(name, role, ""))

    def server_block(self, config_dir: Path) -> str:
        """The lines of a nats-server config (in `config_dir`) that turn TLS and the
        authorization on. nats-server reads an include relative to the including file."""
        authorization = os.path.relpath(self.authorization_file, config_dir)
        return f"""\
tls {{
  cert_file: {_toml(str(self.cert_file))}
  key_file: {_toml(str(self.key_file))}
  ca_file: {_toml(str(self.ca_file))}
  timeout: 5
}}
include {_toml(authorization)}
"""

    def route_tls(self) -> str:
        """The `tls` block of a server's `cluster` section: routes take TLS only, and
        each server proves itself with the lab CA's certificate (`verify`)."""
        return f"""\
  tls {{
    cert_file: {_toml(str(self.cert_file))}
    key_file: {_toml(str(self.key_file))}
    ca_file: {_toml(str(self.ca_file))}
    verify: true
    timeout: 5
  }}
"""

    def config_lines(self, name: str, role: Role) -> str:
        """The `[nats]` keys of a daemon's config that make it connect as this identity (made before)."""
        return f"identity = {_toml(str(self.identity_file(name, role)))}\ntls_ca = {_toml(str(self.ca_file))}\n"

    def settings(self, servers: list[str], name: str = LAB_ADMIN, role: Role = Role.ADMIN, **options: float) -> NatsSettings:
        """Settings of a client acting as this identity (made before)."""
        return NatsSettings(
            servers=servers, identity=str(self.identity_file(name, role)), tls_ca=str(self.ca_file), **options
        )


def _serves_routes(cert_file: Path) -> bool:
    """Whether the lab's server certificate exists and may also be a TLS client (routes);
    labs made before routes took TLS have a server-only one, which is made again."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage
