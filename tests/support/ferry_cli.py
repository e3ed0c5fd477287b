"""Running the real `ferry` CLI against a NATS server, as an operator would."""

import subprocess
from dataclasses import dataclass

import msgspec

from ferry.lab.lab import Lab
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


def ferry(where: str | Lab, *args: str, timeout: float = 180.0) -> CliResult:
    """Run the `ferry` CLI as the lab's admin operator; ``where``: a lab, or a test
    server's URL (tests/support/secured.py gives it the identity and CA)."""
    reach = where.cli_args() if isinstance(where, Lab) else cli_args(where)
    proc = subprocess.run(
        [script("ferry"), *reach, *args],
        capture_output=True, text=True, timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
