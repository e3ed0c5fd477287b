"""`ferry-admin`: what a cluster's administrator runs once, and again for each new host.

    ferry-admin identities --out /etc/ferry/identities \\
        --hosts hv1,hv2,hv3 --coordinators c1,c2 --admins alice --viewers bob

writes one identity file per name (`hosts/hv1.identity`, ... mode 0600),
`manifest.json` (names, roles and public keys) and `nats-authorization.conf`,
the block each nats-server includes. Run it again with more names to add them:
identities already in the folder are kept as they are (same seed), so only the
new files need copying; then reload the servers (`nats-server --signal
reload`). `--remove NAME` takes one out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import msgspec
import nkeys

from ferry.cli.backup import read_backup, restore, take_backup, write_backup
from ferry.cli.identities import Member, authorization_conf, problems
from ferry.cli.output import say_error
from ferry.proto.errors import ErrorCode, FerryError
from ferry.runtime.config import NatsSettings, nats_problems
from ferry.runtime.connection import connect_error, connect_once
from ferry.runtime.identity import IdentityFile, Role, write_identity
from ferry.runtime.logs import quiet_asyncio
from ferry.runtime.version import VERSION

MANIFEST = "manifest.json"
AUTHORIZATION = "nats-authorization.conf"
_MEMBERS = msgspec.json.Decoder(list[Member])


def identity_path(folder: Path, member: Member) -> Path:
    return folder / f"{member.role}s" / f"{member.name}.identity"


def new_identity(name: str, role: Role) -> IdentityFile:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    return IdentityFile(name=name, role=role, public_key=public, seed=seed.decode())


def read_manifest(folder: Path) -> list[Member]:
    path = folder / MANIFEST
    if not path.exists():
        return []
    try:
        return _MEMBERS.decode(path.read_bytes())
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SystemExit(f"ferry-admin: {path} is not a manifest written by ferry-admin ({exc})") from None


def update(folder: Path, wanted: list[tuple[str, Role]], remove: list[str]) -> tuple[list[Member], list[Member]]:
    """Every member after the change, and the ones made now. Refuses, before
    writing anything, a name asked for with another role than it has."""
    before = {m.name: m for m in read_manifest(folder)}
    members = {name: m for name, m in before.items() if name not in remove}
    unknown = [name for name in remove if name not in before]
    if unknown:
        raise SystemExit(f"ferry-admin: nothing to remove: {', '.join(unknown)} not in {folder / MANIFEST}")
    for name, role in wanted:
        have = members.get(name)
        if have is not None and have.role != role:
            raise SystemExit(f"ferry-admin: {name} is already a {have.role}; remove it first to make it a {role}")
    made = {
        name: new_identity(name, role) for name, role in dict(wanted).items() if name not in members
    }
    after = [*members.values(), *(Member(i.name, i.role, i.public_key) for i in made.values())]
    found = problems(after)
    if found:
        raise SystemExit("ferry-admin: " + "; ".join(found))
    for identity in made.values():
        write_identity(identity_path(folder, Member(identity.name, identity.role, identity.public_key)), identity)
    for name in remove:
        identity_path(folder, before[name]).unlink(missing_ok=True)
    (folder / MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(sorted(after, key=lambda m: m.name))) + b"\n")
    (folder / AUTHORIZATION).write_text(authorization_conf(after))
    return after, [m for m in after if m.name in made]


def nats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", action="append", metavar="URL",
        help="NATS server URL (repeatable, or comma-separated; default $FERRY_NATS_URL or nats://127.0.0.1:4222)",
    )
    parser.add_argument("--identity", default=os.environ.get("FERRY_IDENTITY", ""), metavar="FILE",
                        help="a coordinator's identity file (default $FERRY_IDENTITY)")
    parser.add_argument("--tls-ca", default=os.environ.get("FERRY_NATS_TLS_CA", ""), metavar="PEM",
                        help="CA of the NATS servers' certificates (default $FERRY_NATS_TLS_CA)")
    parser.add_argument("--tls-cert", default=os.environ.get("FERRY_NATS_TLS_CERT", ""), metavar="PEM")
    parser.add_argument("--tls-key", default=os.environ.get("FERRY_NATS_TLS_KEY", ""), metavar="PEM")


def nats_settings(args: argparse.Namespace) -> NatsSettings:
    given = args.server or [os.environ.get("FERRY_NATS_URL", "nats://127.0.0.1:4222")]
    settings = NatsSettings(
        servers=[url.strip() for value in given for url in value.split(",") if url.strip()],
        identity=args.identity, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
    )
    found = nats_problems(settings, name=lambda key: "--" + key.replace("_", "-"))
    if found:
        raise FerryError(ErrorCode.BAD_REQUEST, "; ".join(found))
    return settings


async def _kv_command(args: argparse.Namespace) -> int:
    quiet_asyncio()
    try:
        settings = nats_settings(args)
        # A file that is no backup is said before anything connects.
        saved = read_backup(args.file) if args.command == "restore" else None
        try:
            nc = await connect_once(settings, name="ferry-admin")
        except FerryError:
            raise
        except Exception as exc:
            raise connect_error(settings, exc) from None
        try:
            if args.command == "backup":
                taken = await take_backup(nc)
                write_backup(args.file, taken)
                for bucket in taken.buckets:
                    print(f"{bucket.name}: {len(bucket.entries)} keys")
                print(f"backup written to {args.file}")
            else:
                assert saved is not None
                done = await restore(nc, saved, force=args.force)
                for name, (written, deleted) in done.items():
                    print(f"{name}: {written} keys restored, {deleted} deleted")
                print("restored; start the coordinators")
        finally:
            await nc.close()
    except FerryError as exc:
        say_error(exc.code, exc.message)
        return 1
    return 0


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry-admin", description="Set up a Ferry cluster's identities.")
    parser.add_argument("--version", action="version", version=f"ferry {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)
    ids = commands.add_parser(
        "identities", help="make identity files and the nats-server authorization config",
        description="Make (or add to) the identities of a cluster; existing ones are kept.",
    )
    ids.add_argument("--out", required=True, type=Path, help="the identities folder (made if missing)")
    for role, flag in ((Role.HOST, "--hosts"), (Role.COORDINATOR, "--coordinators"),
                       (Role.ADMIN, "--admins"), (Role.VIEWER, "--viewers")):
        ids.add_argument(flag, default="", metavar="NAMES", help=f"comma-separated {role} names")
    ids.add_argument("--remove", default="", metavar="NAMES", help="comma-separated names to take out")
    backup = commands.add_parser(
        "backup", help="save Ferry's KV buckets (sessions, claims, drains, settings) to a file",
        description="Save every ferry_* KV bucket but the leader lease to FILE (mode 0600). "
        "Connect as a coordinator identity: only coordinators may read KV.",
    )
    backup.add_argument("file", type=Path)
    restore = commands.add_parser(
        "restore", help="put Ferry's KV buckets back as a backup file has them (coordinators stopped)",
        description="Make each bucket in FILE equal to it: keys written, keys the backup lacks deleted. "
        "Refused while a coordinator renews the leader lease.",
    )
    restore.add_argument("file", type=Path)
    restore.add_argument("--force", action="store_true", help="restore even though the lease looks renewed")
    for command in (backup, restore):
        nats_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("backup", "restore"):
        return asyncio.run(_kv_command(args))

    wanted = [
        (name, role)
        for role, value in ((Role.HOST, args.hosts), (Role.COORDINATOR, args.coordinators),
                            (Role.ADMIN, args.admins), (Role.VIEWER, args.viewers))
        for name in _names(value)
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    after, made = update(args.out, wanted, _names(args.remove))
    for member in made:
        print(f"new {member.role} {member.name}: {identity_path(args.out, member)}")
    print(f"{len(after)} identities in {args.out / MANIFEST}; nats-server config: {args.out / AUTHORIZATION}")
    if made or args.remove:
        print("next: copy each new identity file to its host (mode 0600), then reload every nats-server "
              "(nats-server --signal reload, or systemctl reload nats-server)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
