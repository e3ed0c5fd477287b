"""A nats-server that asks for credentials and TLS, for tests: an operator, one
account with JetStream, a user JWT + nkey (`.creds` file) per identity, and a
server certificate from a test CA.

Decentralised JWT auth is what a `.creds` file is for: the server trusts the
operator, preloads the account (MEMORY resolver), and checks each user's JWT,
signed by the account, and the nonce signed with the user's seed.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import nkeys

from ferry.lab.certs import issue, make_ca


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class Identity:
    seed: bytes
    public: str

    @classmethod
    def new(cls, prefix: int) -> Identity:
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        return cls(seed, nkeys.from_seed(seed).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return nkeys.from_seed(bytearray(self.seed)).sign(data)


def jwt(issuer: Identity, subject: str, name: str, nats: dict) -> str:
    claims = {"iat": int(time.time()), "iss": issuer.public, "name": name, "sub": subject, "nats": {**nats, "version": 2}}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(issuer.sign(f'{head}.{body}'.encode()))}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1}
ACCOUNT_LIMITS = {
    **UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1,
    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
}


@dataclass(frozen=True)
class Tenancy:
    """One operator, Ferry's account and the system account (JetStream needs one);
    `user(name)` writes a creds file for a new user of Ferry's account."""

    folder: Path
    operator: Identity
    account: Identity
    system: Identity

    @classmethod
    def create(cls, folder: Path) -> Tenancy:
        folder.mkdir(parents=True, exist_ok=True)
        account = nkeys.PREFIX_BYTE_ACCOUNT
        return cls(folder, Identity.new(nkeys.PREFIX_BYTE_OPERATOR), Identity.new(account), Identity.new(account))

    def operator_jwt(self) -> str:
        return jwt(self.operator, self.operator.public, "ferry-test", {"type": "operator", "system_account": self.system.public})

    def system_jwt(self) -> str:
        return jwt(self.operator, self.system.public, "SYS", {"type": "account", "limits": {**UNLIMITED, "conn": -1}})

    def account_jwt(self) -> str:
        return jwt(self.operator, self.account.public, "ferry", {"type": "account", "limits": ACCOUNT_LIMITS})

    def user(self, name: str) -> Path:
        user = Identity.new(nkeys.PREFIX_BYTE_USER)
        token = jwt(self.account, user.public, name, {"type": "user", "pub": {}, "sub": {}, **UNLIMITED})
        path = self.folder / f"{name}.creds"
        path.write_text(
            f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
        )
        path.chmod(0o600)
        return path


@dataclass(frozen=True)
class ServerTls:
    ca_file: Path
    cert_file: Path
    key_file: Path


def server_tls(folder: Path) -> ServerTls:
    now = datetime.datetime.now(datetime.UTC)
    ca = make_ca(now)
    server = issue(ca, "localhost", "127.0.0.1", "server", now)
    files = ServerTls(folder / "ca.pem", folder / "server-cert.pem", folder / "server-key.pem")
    for path, data in ((files.ca_file, ca.cert_pem), (files.cert_file, server.cert_pem), (files.key_file, server.key_pem)):
        path.write_bytes(data)
    return files


def secured_config(tenancy: Tenancy, tls: ServerTls, port: int, store_dir: Path) -> str:
    """nats-server config: TLS on the client port, JWT auth, JetStream."""
    return f"""
listen: 127.0.0.1:{port}
operator: {json.dumps(tenancy.operator_jwt())}
resolver: MEMORY
system_account: {tenancy.system.public}
resolver_preload: {{
  {tenancy.account.public}: {json.dumps(tenancy.account_jwt())}
  {tenancy.system.public}: {json.dumps(tenancy.system_jwt())}
}}
jetstream {{ store_dir: {json.dumps(str(store_dir))} }}
tls {{
  cert_file: {json.dumps(str(tls.cert_file))}
  key_file: {json.dumps(str(tls.key_file))}
  timeout: 2
}}
"""
