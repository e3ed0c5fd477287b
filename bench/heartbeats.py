"""Heartbeats of many hosts from one light process, for bench/scale.

    python -m bench.heartbeats --server URL --hosts N [--interval 2] [--first 1]

publishes, for hosts `gen00001` ... (numbered from `--first`), a heartbeat each
`--interval` seconds, spread evenly over the interval as real agents' are. Each
is the `HostStatus` a real agent sends for a host with ten running VMs (names,
UUIDs, attachments), its health checks, versions, peer URI and networks, encoded
once at start; only the sequence number and the send time are written in per
beat. So the coordinator receives what thousands of agents would send, while
this process costs a fraction of a core. Runs until SIGTERM or SIGINT.

The hosts answer no agent verbs: placement must not pick them for a move that
is really made (bench/scale gives its simulated agents much more room).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import uuid

import msgspec
import nats

from ferry.agent.beats import Beats
from ferry.proto import subjects
from ferry.proto.codec import encode
from ferry.proto.host import Capacity, HealthCheck, HealthState, HostBeat, HostStatus, Versions, VmInfo, report_digest
from ferry.proto.network import Attachment, AttachmentKind, HostNetworks, LibvirtNetwork
from ferry.runtime.version import VERSION

# Written in at encoding and swapped per beat: values no real field takes.
_SEQ_MARK = 987_654_321_987
_SENT_MARK = 1_234_567.125
VMS_PER_HOST = 10
VM_VCPUS = 4
VM_MEMORY_MIB = 8192
HOST_CPUS = 32
HOST_MEMORY_MIB = 131_072
# Publishing rounds per interval: each round sends the hosts whose turn it is.
ROUNDS_PER_SECOND = 20


def host_name(i: int) -> str:
    return f"gen{i:05d}"


def host_status(host: str, interval: float) -> HostStatus:
    """What an agent on a busy, healthy hypervisor says about it."""
    vms = [
        VmInfo(
            name=f"{host}-vm{n:02d}",
            uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{host}-vm{n}")),
            vcpus=VM_VCPUS,
            memory_mib=VM_MEMORY_MIB,
            attachments=[Attachment(kind=AttachmentKind.BRIDGE, source="br0")],
        )
        for n in range(VMS_PER_HOST)
    ]
    used = VMS_PER_HOST * VM_MEMORY_MIB
    return HostStatus(
        host=host,
        seq=_SEQ_MARK,
        boot_id=uuid.uuid4().hex,
        sent_at=_SENT_MARK,
        interval=interval,
        capacity=Capacity(
            cpus=HOST_CPUS,
            memory_total_mib=HOST_MEMORY_MIB,
            memory_free_mib=HOST_MEMORY_MIB - used - 4096,
            vcpus_used=VMS_PER_HOST * VM_VCPUS,
            memory_used_mib=used,
        ),
        health=HealthState.OK,
        checks=[
            HealthCheck("hypervisor", HealthState.OK, "libvirt reachable"),
            HealthCheck("memory", HealthState.OK, "38% of memory free"),
            HealthCheck("images_disk", HealthState.OK, "71% of /var/lib/libvirt/images free"),
        ],
        vms=vms,
        versions=Versions(libvirt="11.3.0", qemu="10.0.2", agent=VERSION),
        host_uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, host)),
        cpu_model="EPYC-Milan",
        arch="x86_64",
        backend="libvirt",
        peer_uri=f"qemu+tls://{host}.example.net/system",
        migration_address=f"{host}.example.net",
        networks=HostNetworks(networks=[LibvirtNetwork(name="default")], devices=["br0", "eno1"]),
    )


class Template:
    """One encoded message with its sequence number and send time cut out."""

    def __init__(self, message: HostStatus | HostBeat) -> None:
        data = encode(message)
        before_seq, rest = data.split(str(_SEQ_MARK).encode(), 1)
        middle, after = rest.split(repr(_SENT_MARK).encode(), 1)
        self._parts = (before_seq, middle, after)

    def fill(self, seq: int, now: float) -> bytes:
        before_seq, middle, after = self._parts
        return b"%s%d%s%.3f%s" % (before_seq, seq, middle, now, after)


class SimulatedHost:
    """What an agent sends, as agent/beats.py decides it: full reports until a
    coordinator asks for one, then short beats between full reports."""

    def __init__(self, status: HostStatus, *, full_only: bool = False) -> None:
        # An agent from before short beats sends no digest (so nobody asks it for anything).
        status = msgspec.structs.replace(status, digest="" if full_only else report_digest(status))
        self._full_only = full_only
        self.subject = subjects.host_status(status.host)
        self._full = Template(status)
        self._full_short = Template(msgspec.structs.replace(status, short_beats=True))
        self._beat = Template(
            HostBeat(host=status.host, seq=_SEQ_MARK, boot_id=status.boot_id, sent_at=_SENT_MARK,
                     interval=status.interval, digest=status.digest)
        )
        self._status = status
        self._beats = Beats()
        self.seq = 0

    def ask(self) -> None:
        # An agent from before short beats sends its full report every time, asked or not.
        self._beats.ask(not self._full_only)

    def next(self, now: float) -> bytes:
        self.seq += 1
        # Beats decides on the digest alone: the templates carry the changing fields.
        sent = self._beats.next(self._status)
        if isinstance(sent, HostBeat):
            return self._beat.fill(self.seq, now)
        return (self._full_short if self._beats.allowed else self._full).fill(self.seq, now)



async def publish(url: str, hosts: list[str], interval: float, stop: asyncio.Event, *, full_only: bool = False) -> int:
    """Heartbeats until `stop`; returns how many were sent."""
    simulated = {host: SimulatedHost(host_status(host, interval), full_only=full_only) for host in hosts}
    nc = await nats.connect(url, name="ferry-bench-heartbeats", max_reconnect_attempts=-1, pending_size=64 * 1024 * 1024)

    async def asked(msg) -> None:
        # ferry.agent.<host>.report: the host token is the name (no dots in these names).
        host = simulated.get(msg.subject.split(".")[2])
        if host is not None:
            host.ask()

    await nc.subscribe(subjects.agent_verb("*", "report"), cb=asked)
    sent = 0
    rounds = max(1, round(interval * ROUNDS_PER_SECOND))
    # Host i beats in round i % rounds of each interval: evenly spread, as independent agents are.
    ordered = list(simulated.values())
    turns = [ordered[r::rounds] for r in range(rounds)]
    started = time.monotonic()
    try:
        beat = 0
        while not stop.is_set():
            now = time.time()
            for host in turns[beat % rounds]:
                await nc.publish(host.subject, host.next(now))
            sent += len(turns[beat % rounds])
            await nc.flush()
            beat += 1
            wait = started + beat * interval / rounds - time.monotonic()
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except TimeoutError:
                    pass
    finally:
        await nc.close()
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.heartbeats", description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="nats:// URL (the bench's own server, no identities)")
    parser.add_argument("--hosts", type=int, required=True)
    parser.add_argument("--first", type=int, default=1, help="number of the first host")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between one host's heartbeats")
    parser.add_argument(
        "--full-only", action="store_true", help="full reports every time, as agents from before short beats (a baseline)"
    )
    args = parser.parse_args(argv)
    hosts = [host_name(i) for i in range(args.first, args.first + args.hosts)]

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await publish(args.server, hosts, args.interval, stop, full_only=args.full_only)

    sent = asyncio.run(run())
    print(f"sent {sent} heartbeats for {len(hosts)} hosts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
