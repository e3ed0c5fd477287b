"""Running the real `ferry` CLI against a NATS server, as an operator would."""

import subprocess
from dataclasses import dataclass

import msgspec

from ferry.proto.session import Session
from tests.support.processes import script


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def session(self) -> Session:
        return msgspec.json.decode(self.stdout, type=Session)


def ferry(nats_url: str, *args: str, timeout: float = 180.0) -> CliResult:
    proc = subprocess.run(
        [script("ferry"), "--server", nats_url, *args], capture_output=True, text=True, timeout=timeout
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
