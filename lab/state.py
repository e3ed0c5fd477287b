"""The lab's state file (DIR/lab.json): what runs, so another process can find it.

`ferry-lab status` and `down` run in a different process than `up`; they learn
the lab's shape and the pid + start time of every daemon from this file.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from ferry.lab.errors import LabError
from ferry.lab.processes import ProcessRef

STATE_VERSION = 1


class LabState(msgspec.Struct):
    dir: str
    hosts: int
    address_base: str
    cache_dir: str
    # Per nats-server ("n1"...): its client port and its cluster (route) port,
    # chosen at first start and kept, so a restarted server comes back where
    # the others and the clients look for it. (A file of the one-server lab
    # still decodes: its `nats_port` is ignored and new ports are chosen.)
    nats_ports: dict[str, int] = {}
    route_ports: dict[str, int] = {}
    # Role name ("libvirtd:hv1", "nats-server:n1", "agent:hv1", "coordinator:c1") -> process.
    processes: dict[str, ProcessRef] = {}
    version: int = STATE_VERSION


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LabState)


def load_state(path: Path) -> LabState | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as error:
        raise LabError(f"The lab state file {path} is damaged ({error}); remove it after stopping the lab by hand.") from None


def save_state(path: Path, state: LabState) -> None:
    """Write atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(_encoder.encode(state)))
    os.replace(tmp, path)
