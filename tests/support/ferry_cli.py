"""Running the real `ferry` CLI against a NATS server, as an operator would."""

import subprocess
from dataclasses import dataclass

import msgspec

from ferry.proto.session import Session
from tests.support.processes import script
from tests.support.secured import cli_args


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def session(self) -> Session:
        return msgspec.json.decode(self.stdout, type=Session)


def ferry(servers: str, *args: str, timeout: float = 180.0) -> CliResult:
    """Run the `ferry` CLI; ``servers``: one NATS URL, or several joined by commas (a lab's ``nats_servers``)."""
    proc = subprocess.run(
        [script("ferry"), *cli_args(servers), *args],
        capture_output=True, text=True, timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
