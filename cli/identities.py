"""What each Ferry identity may publish and subscribe to, and the nats-server
authorization config that says so. Pure: no files, no keys made here.

The table (see README "Security"):

| role        | publishes                                   | subscribes                                     |
|-------------|---------------------------------------------|------------------------------------------------|
| host A      | ferry.host.A.>                              | ferry.agent.A.>, its inbox, $SRV.> (discovery) |
| coordinator | ferry.agent.>, ferry.coordinator.>, JetStream and KV ($JS.API.>, $JS.ACK.>, $JS.FC.>, $KV.>) | ferry.host.*.>, ferry.api.>, ferry.coordinator.>, its inbox, $SRV.> |
| admin X     | ferry.api.X.> (every verb)                  | its inbox, progress and events                 |
| viewer Y    | ferry.api.Y.<read verb>, ferry.api.Y.via.*.<read verb> | its inbox, progress and events      |

Hosts and coordinators answer requests (`allow_responses`); operators only ask.
Everything not allowed is denied: an anonymous client cannot even connect.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from ferry.proto import subjects
from ferry.runtime.identity import Role, inbox_prefix, name_problem, token


class Member(msgspec.Struct, frozen=True):
    """An identity as the server knows it (and manifest.json lists it): no seed."""

    name: str
    role: Role
    public_key: str


# Operators see how sessions progress and what the coordinator announces.
_WATCH = [subjects.ALL_HOST_SESSIONS, subjects.ALL_HOST_EVENTS, subjects.COORDINATOR_EVENTS]


def permissions(member: Member) -> dict[str, object]:
    """The nats-server `permissions` block of one identity."""
    inbox = f"{inbox_prefix(member.name)}.>"
    tok = token(member.name)
    if member.role == Role.HOST:
        return {
            "publish": {"allow": [f"{subjects.PREFIX}.host.{tok}.>"]},
            "subscribe": {"allow": [f"{subjects.PREFIX}.agent.{tok}.>", inbox, "$SRV.>"]},
            "allow_responses": True,
        }
    if member.role == Role.COORDINATOR:
        return {
            "publish": {
                "allow": [
                    f"{subjects.PREFIX}.agent.>", f"{subjects.PREFIX}.coordinator.>",
                    "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$SRV.>",
                ]
            },
            "subscribe": {
                "allow": [
                    f"{subjects.PREFIX}.host.*.>", f"{subjects.PREFIX}.api.>", f"{subjects.PREFIX}.coordinator.>",
                    inbox, "$SRV.>",
                ]
            },
            # Two services answer a discovery ping: the API and, while leading, the leader's.
            "allow_responses": {"max": 2},
        }
    if member.role == Role.ADMIN:
        allowed = [f"{subjects.PREFIX}.api.{tok}.>"]
    else:
        allowed = [
            subject
            for verb in subjects.READ_VERBS
            for subject in (subjects.api(verb, caller=tok), subjects.via_api("*", verb, caller=tok))
        ]
    return {"publish": {"allow": allowed}, "subscribe": {"allow": [inbox, *_WATCH]}}


def problems(members: Iterable[Member]) -> list[str]:
    """Why these identities cannot live in one cluster (bad or clashing names), one sentence each."""
    found: list[str] = []
    seen: dict[str, Member] = {}
    for member in members:
        problem = name_problem(member.name, member.role)
        if problem:
            found.append(problem)
            continue
        other = seen.get(token(member.name))
        if other is not None:
            found.append(
                f"{member.role} {member.name} and {other.role} {other.name} would share the inbox and subjects "
                f"{token(member.name)!r}: give one of them another name"
            )
        seen[token(member.name)] = member
    return found


def authorization_conf(members: Iterable[Member]) -> str:
    """The nats-server config block (include it from the server's config)."""
    ordered = sorted(members, key=lambda m: (list(Role).index(m.role), m.name))
    lines = ["# Written by ferry-admin identities: one nkey per Ferry identity, with its permissions.",
             "# Regenerate it rather than editing it; reload the servers after (nats-server --signal reload).",
             "authorization {", "  users = ["]
    for member in ordered:
        user = {"nkey": member.public_key, "permissions": permissions(member)}
        lines.append(f"    # {member.role} {member.name}")
        lines.append("    " + msgspec.json.encode(user).decode() + ",")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)
