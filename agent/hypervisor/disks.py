"""Disk images on this host's own storage: where they are, and making or removing one.

The domain XML names images as the hypervisor sees them. The agent usually sees
the same paths; in the lab each hypervisor lives in its own mount namespace and
its images folder appears elsewhere to the agent, so the two folders are
configured separately.
"""

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ferry.proto.agent import DiskInfo


class DiskError(Exception):
    pass


@dataclass(frozen=True)
class ImagesFolder:
    host_dir: Path  # as this agent sees it
    domain_dir: PurePosixPath  # as the hypervisor and the domain XML name it

    def is_local(self, domain_path: str) -> bool:
        return PurePosixPath(domain_path).is_relative_to(self.domain_dir)

    def host_path(self, domain_path: str) -> Path:
        """Where the agent finds a disk the domain names `domain_path`."""
        if not self.is_local(domain_path):
            return Path(domain_path)
        relative = PurePosixPath(domain_path).relative_to(self.domain_dir)
        if ".." in relative.parts:
            raise DiskError(f"{domain_path} leaves the images folder {self.domain_dir}")
        return self.host_dir / relative


async def create_image(path: Path, disk: DiskInfo) -> bool:
    """An empty image of the same format and virtual size; False if one is there already."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", "create", "-q", "-f", disk.format, str(path), str(disk.capacity_bytes),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await proc.communicate()
    if proc.returncode != 0:
        raise DiskError(f"qemu-img could not create {path}: {err.decode(errors='replace').strip()}")
    return True


async def remove_image(path: Path) -> bool:
    try:
        await asyncio.to_thread(os.remove, path)
    except FileNotFoundError:
        return False
    return True
