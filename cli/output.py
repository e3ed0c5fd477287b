"""Output shared by the CLI's commands."""

import sys
from typing import Any

import msgspec


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value)).decode() + "\n")


def say_error(code: str, message: str) -> None:
    # Plain, unwrapped: scripts match on these lines.
    sys.stderr.write(f"ferry: {code}: {message}\n")
