"""Lab slots: a folder and an address range that one process holds at a time.

Test runs (and benchmarks) on one machine may overlap; each claims a free slot
with a lock file, so two runs never start, reuse or stop each other's lab.
Slot N is the folder PREFIX-N and the addresses 127.0.N.x; the lock is released
when the holder exits, however it exits.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ferry.lab.errors import LabError
from ferry.lab.lab import Lab, sweep_namespaces
from ferry.lab.layout import STATE_FILE_NAME

DEFAULT_PREFIX = Path("/var/tmp/ferry-lab-slot")
# Away from the hand-started lab's 127.0.10.N.
DEFAULT_SLOTS = range(40, 80)


@dataclass(frozen=True)
class LabSlot:
    number: int
    dir: Path
    address_base: str


@contextmanager
def claim_slot(prefix: Path = DEFAULT_PREFIX, slots: range = DEFAULT_SLOTS) -> Iterator[LabSlot]:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for number in slots:
        handle = open(f"{prefix}-{number}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield LabSlot(number, Path(f"{prefix}-{number}"), f"127.0.{number}")
        finally:
            handle.close()
        return
    raise LabError(f"All {len(slots)} lab slots under {prefix}-N are in use by other processes.")


def clear_slot(dir: Path) -> None:
    """Stop a lab an earlier, interrupted holder left in ``dir`` and remove its files.

    Only for a slot's folder, which its holder owns alone.
    """
    if (dir / STATE_FILE_NAME).exists():
        Lab.attach(dir).down()
    sweep_namespaces(dir)  # nothing may keep mounts from a folder about to be removed
    shutil.rmtree(dir, ignore_errors=True)
