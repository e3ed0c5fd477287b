"""Is a lost host really dead? Asked before anything is fenced.

A host is lost when its agent is silent past the timeout. That alone does not
make it dead: an agent that crashed leaves its libvirtd and its guests
running, and powering that host off would kill healthy VMs. So two other
hosts' agents are asked whether the lost host's libvirtd still accepts
connections (agent/peer_probe.py):

- any of them reaches it: the host is alive, its agent is not; an alert, no fence;
- two of them cannot: its libvirtd answers nobody, it is a fencing candidate;
- fewer than two could ask (a small or sick cluster): unknown, nothing is done,
  and the operator is told to look.

`judge` is pure; `DeathCheck` asks the peers.
"""

import asyncio
import enum
from collections.abc import Awaitable, Callable, Iterable

from ferry.proto.agent import ProbeReply, ProbeRequest
from ferry.proto.api import HostState, HostView
from ferry.proto.errors import FerryError
from ferry.proto.events import HostProbed
from ferry.proto.host import HealthState

PROBERS = 2
PROBE_SECONDS = 5.0
# Peers asked at most: one that cannot be asked (lost itself, just not known yet) is replaced by the next.
CANDIDATES = 5


class Death(enum.StrEnum):
    UNREACHABLE = "unreachable"  # its libvirtd answers no peer: a fencing candidate
    ALIVE = "alive"  # its agent is silent, its libvirtd answers: alert, never fence
    UNKNOWN = "unknown"  # too few peers could tell


def probers(lost: str, views: Iterable[HostView], count: int = PROBERS) -> list[str]:
    """Up, healthy hosts other than the lost one, by name: the first `count`."""
    fit = sorted(v.host for v in views if v.host != lost and v.state == HostState.UP and v.health != HealthState.CRITICAL)
    return fit[:count]


def judge(lost: str, uri: str, answers: list[ProbeReply | str]) -> tuple[Death, str]:
    """The verdict and its sentence, from the peers' replies (a string: why a peer could not answer)."""
    replies = [a for a in answers if isinstance(a, ProbeReply)]
    reached = [r.host for r in replies if r.answered]
    if reached:
        return Death.ALIVE, (
            f"{lost}'s agent is silent but its libvirtd answers {', '.join(reached)}: not fenced, its VMs run on; "
            f"the agent on {lost} needs a look"
        )
    silent = [r for r in replies if not r.answered and not r.detail.startswith("not probed")]
    if len(silent) >= PROBERS:
        seen = "; ".join(f"{r.host}: {r.detail}" for r in silent)
        return Death.UNREACHABLE, f"{lost}'s libvirtd ({uri}) answers none of its peers ({seen}): a candidate for fencing"
    why = "; ".join([*(f"{r.host}: {r.detail}" for r in replies), *(a for a in answers if isinstance(a, str))])
    return Death.UNKNOWN, (
        f"only {len(silent)} of the {PROBERS} peers needed could probe {lost}'s libvirtd"
        + (f" ({why})" if why else " (no other host is up)")
        + ": nothing is fenced; check the host by hand"
    )


Probe = Callable[[str, ProbeRequest], Awaitable[ProbeReply]]


class DeathCheck:
    """Asks the peers of a lost host, and says what they found (a HostProbed event)."""

    def __init__(self, probe: Probe, views: Callable[[], list[HostView]], peer_uri: Callable[[str], str]) -> None:
        self._probe = probe
        self._views = views
        self._peer_uri = peer_uri

    async def check(self, lost: str) -> HostProbed:
        uri = self._peer_uri(lost)
        candidates = probers(lost, self._views(), CANDIDATES)
        if not uri:
            verdict, reason = Death.UNKNOWN, f"{lost} never said its peer URI: its libvirtd cannot be probed; check it by hand"
            return HostProbed(host=lost, verdict=str(verdict), reason=reason, peers=candidates[:PROBERS])
        # Two at a time; a peer that cannot be asked (it may be failing too) gives its turn to the next.
        answers: list[ProbeReply | str] = []
        asked: list[str] = []
        while candidates and sum(isinstance(a, ProbeReply) for a in answers) < PROBERS:
            wanted = PROBERS - sum(isinstance(a, ProbeReply) for a in answers)
            turn, candidates = candidates[:wanted], candidates[wanted:]
            asked += turn
            answers += await asyncio.gather(*(self._ask(peer, uri) for peer in turn))
        verdict, reason = judge(lost, uri, answers)
        return HostProbed(host=lost, verdict=str(verdict), reason=reason, peers=[a.host for a in answers if isinstance(a, ProbeReply)] or asked)

    async def _ask(self, peer: str, uri: str) -> ProbeReply | str:
        try:
            return await self._probe(peer, ProbeRequest(uri=uri, seconds=PROBE_SECONDS))
        except FerryError as error:
            return f"{peer} could not be asked: {error.message}"
