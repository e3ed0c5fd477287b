"""What the demo's steps share: running `ferry` as an operator would, waiting, guests."""

import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from ferry.lab.errors import LabError
from ferry.lab.lab import Lab

console = Console()
FERRY = str(Path(sys.executable).parent / "ferry")


def step(text: str) -> None:
    console.print(f"\n[bold cyan]==>[/] [bold]{text}[/]")


def ferry(lab: Lab, *args: str, show: bool = True, timeout: float = 60.0) -> str:
    command = [FERRY, "--server", lab.nats_url, *args]
    if show:
        console.print(f"[dim]$ ferry {' '.join(args)}[/]")
    try:
        out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError(f"`ferry {' '.join(args)}` did not finish within {timeout:.0f} s; logs are in {lab.dir}") from None
    if show:
        sys.stdout.write(out.stdout)
        sys.stdout.flush()
    if out.returncode != 0:
        raise LabError(f"`ferry {' '.join(args)}` failed: {out.stderr.strip()}")
    return out.stdout


def wait_hosts(lab: Lab, check, what: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            hosts = {h["host"]: h for h in json.loads(ferry(lab, "hosts", "--json", show=False))["hosts"]}
            if check(hosts):
                return hosts
        except LabError:
            pass  # the coordinator may still be starting
        if time.monotonic() > deadline:
            raise LabError(f"the demo waited {timeout:.0f} s for {what}, in vain; logs are in {lab.dir}")
        time.sleep(0.5)


def fresh_guest(lab: Lab, name: str, host: str, memory_mib: int) -> None:
    """Start `name` on `host` from scratch (an earlier demo may have left it shut off) and wait for its first tick."""
    lab.delete_guest(name)
    # Idle, with 48 MiB to copy: a guest that keeps rewriting its memory risks
    # QEMU 7.2's TCG lost-write bug on every pass (README, "The lab's QEMU and TCG").
    lab.create_guest(name, host, memory_mib=memory_mib, fill_mb=48)
    lab.wait_for_tick(name, host, 1)
    console.print(f"  {name} runs on {host}")
