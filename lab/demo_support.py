"""What the demo's steps share: running `ferry` as an operator would, waiting, guests."""

import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

from ferry.lab.errors import LabError
from ferry.lab.lab import Lab
from ferry.lab.nats_security import LAB_ADMIN
from ferry.runtime.identity import Role

console = Console(highlight=False)
FERRY = str(Path(sys.executable).parent / "ferry")


def step(text: str) -> None:
    console.print(f"\n[bold cyan]==>[/] [bold]{text}[/]")


def ferry(
    lab: Lab, *args: str, show: bool = True, timeout: float = 60.0, check: bool = True,
    who: tuple[str, Role] = (LAB_ADMIN, Role.ADMIN),
) -> str:
    """Run `ferry` as `who` (the lab's admin unless said), show its output; a failure
    is a LabError unless `check` is False (then stderr is shown and returned with stdout)."""
    command = [FERRY, *lab.cli_args(*who), *args]
    if show:
        as_whom = "" if who[0] == LAB_ADMIN else f"FERRY_IDENTITY=<{who[0]}> "
        console.print(Text(f"$ {as_whom}ferry {' '.join(args)}", style="dim"))
    try:
        out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError(f"`ferry {' '.join(args)}` did not finish within {timeout:.0f} s; logs are in {lab.dir}") from None
    if show:
        sys.stdout.write(out.stdout)
        if not check:
            sys.stdout.write(out.stderr)
        sys.stdout.flush()
    if out.returncode != 0 and check:
        raise LabError(f"`ferry {' '.join(args)}` failed: {out.stderr.strip()}")
    return out.stdout if check else out.stdout + out.stderr


def wait_hosts(lab: Lab, check, what: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            hosts = {h["host"]: h for h in json.loads(ferry(lab, "hosts", "--json", "--vms", show=False))["hosts"]}
            if check(hosts):
                return hosts
        except LabError:
            pass  # the coordinator may still be starting
        if time.monotonic() > deadline:
            raise LabError(f"the demo waited {timeout:.0f} s for {what}, in vain; logs are in {lab.dir}")
        time.sleep(0.5)


def fresh_guest(
    lab: Lab, name: str, host: str, memory_mib: int, dirty_mb: int = 4, networks: tuple[str, ...] = ()
) -> None:
    """Start `name` on `host` from scratch (an earlier demo may have left it shut off) and wait for its first tick.
    Busy: it keeps rewriting `dirty_mb` MiB of its memory each second, so each move copies pages again."""
    lab.delete_guest(name)
    lab.create_guest(name, host, memory_mib=memory_mib, dirty_mb=dirty_mb, networks=networks)
    lab.wait_for_tick(name, host, 1)
    on = f", an interface on network {', '.join(networks)}" if networks else ""
    console.print(f"  {name} runs on {host} (rewriting {dirty_mb} MiB/s{on})", highlight=False)
