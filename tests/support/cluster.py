"""Talking to a running test cluster (coordinator and agents) the way an operator
would: through the coordinator's client, and by watching its events."""

from collections.abc import Iterable

from ferry.cli.client import FerryClient
from ferry.proto import subjects
from ferry.proto.api import HostState
from ferry.proto.codec import Decoder
from ferry.proto.events import CoordinatorEvent
from tests.support.secured import connect_as, settings_for
from tests.support.waiting import eventually


async def connect_client(nats_server) -> FerryClient:
    """A client of the test's nats-server, with room for a busy CI machine (5 s a request)."""
    return await FerryClient.connect(settings_for(nats_server.url, request_timeout=5.0))


async def wait_hosts_up(client: FerryClient, names: Iterable[str], timeout: float = 15) -> None:
    """Until every named host is reported up: a test that asks for a move
    before its destinations registered would see them as unknown."""
    names = list(names)

    async def probe():
        hosts = {h.host: h for h in (await client.hosts()).hosts}
        return set(hosts) >= set(names) and all(hosts[n].state == HostState.UP for n in names)

    await eventually(probe, timeout=timeout, what=f"{names} up")


async def vms_by_host(client: FerryClient, *, up_only: bool = False) -> dict[str, set[str]]:
    """VM names by host as the coordinator last heard them (reports lag a move by
    up to a heartbeat, so tests poll this); `up_only` leaves out hosts not up."""
    return {
        h.host: {vm.name for vm in h.vms}
        for h in (await client.hosts()).hosts
        if not up_only or h.state == HostState.UP
    }


class CoordinatorEvents:
    """Every coordinator event, decoded, in the order it arrived: tests check
    what the coordinator announced, not only the state it ended in.

        events = await CoordinatorEvents().start(nats_server.url)
        ...
        await events.close()
    """

    def __init__(self) -> None:
        self.seen: list = []
        self._decoder = Decoder(CoordinatorEvent, "event")  # type: ignore[arg-type]

    async def start(self, url: str) -> "CoordinatorEvents":
        self._nc = await connect_as(url)
        await self._nc.subscribe(subjects.COORDINATOR_EVENTS, cb=self._on)
        return self

    async def _on(self, msg) -> None:
        self.seen.append(self._decoder.decode(msg.data))

    def tags(self) -> list[str]:
        return [type(e).__struct_config__.tag for e in self.seen]

    def tagged(self, tag: str) -> list:
        """The events of one kind (`drain_retry`, ...), in order."""
        return [e for e in self.seen if type(e).__struct_config__.tag == tag]

    async def close(self) -> None:
        await self._nc.close()
