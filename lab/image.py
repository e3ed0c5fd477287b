"""The guest image: a Debian kernel and a busybox initramfs, built once and cached.

The kernel comes from the newest ``linux-image-6.1.0-N-amd64`` package apt
knows (downloaded with ``apt-get download``, unpacked with ``dpkg -x``; only
/boot/vmlinuz-* is kept). Its serial driver, tmpfs and devtmpfs are built in,
so the guest needs no modules. Labs on one machine share the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ferry.lab.errors import LabError
from ferry.lab.initramfs import INIT_SCRIPT, guest_initramfs
from ferry.lab.prereqs import busybox_path, is_static_elf

KERNEL_PACKAGE = re.compile(r"^linux-image-6\.1\.0-(\d+)-amd64(-unsigned)?$")
# A kernel file given by hand wins over the download (offline machines).
KERNEL_ENV = "FERRY_LAB_KERNEL"


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path


def ensure_guest_image(cache_dir: Path) -> GuestImage:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / ".lock"):
        return GuestImage(kernel=_ensure_kernel(cache_dir), initrd=_ensure_initrd(cache_dir))


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """Two labs building at once would download the kernel twice and race on the files."""
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _ensure_initrd(cache_dir: Path) -> Path:
    busybox = busybox_path()
    if busybox is None or not is_static_elf(busybox):
        raise LabError("The guest needs a static busybox; install the Debian package busybox-static.")
    data = busybox.read_bytes()
    digest = hashlib.sha256(data + INIT_SCRIPT.encode()).hexdigest()[:12]
    initrd = cache_dir / f"initrd-{digest}.img"
    if not initrd.exists():
        _write_atomic(initrd, guest_initramfs(data))
    return initrd


def _ensure_kernel(cache_dir: Path) -> Path:
    given = os.environ.get(KERNEL_ENV)
    if given:
        if not Path(given).is_file():
            raise LabError(f"{KERNEL_ENV}={given} is not a file.")
        return Path(given)
    cached = sorted(cache_dir.glob("vmlinuz-*"))
    if cached:
        return cached[-1]
    with tempfile.TemporaryDirectory(dir=cache_dir) as work:
        deb = _local_kernel_deb() or _download_kernel_deb(Path(work))
        unpacked = Path(work) / "unpacked"
        _run(["dpkg", "-x", str(deb), str(unpacked)], f"Could not unpack {deb.name}")
        found = sorted((unpacked / "boot").glob("vmlinuz-*"))
        if not found:
            raise LabError(f"{deb.name} holds no /boot/vmlinuz-*; set {KERNEL_ENV} to a kernel file instead.")
        kernel = cache_dir / found[-1].name
        _write_atomic(kernel, found[-1].read_bytes())
        return kernel


def _local_kernel_deb() -> Path | None:
    """A kernel package apt already has in its cache saves a download."""
    debs = [p for p in Path("/var/cache/apt/archives").glob("linux-image-6.1.0-*-amd64*.deb") if "-rt-" not in p.name and "-cloud-" not in p.name]
    return max(debs, key=lambda p: _abi(p.name), default=None)


def _abi(name: str) -> int:
    match = re.search(r"6\.1\.0-(\d+)-", name)
    return int(match.group(1)) if match else -1


def kernel_candidates(apt_names: list[str]) -> list[str]:
    """Newest ABI first; the signed package before the unsigned one of the same ABI."""
    matches = [(KERNEL_PACKAGE.match(name), name) for name in apt_names]
    picked = [(int(m.group(1)), m.group(2) is not None, name) for m, name in matches if m]
    return [name for _abi_, _unsigned, name in sorted(picked, key=lambda t: (-t[0], t[1]))]


def _download_kernel_deb(work: Path) -> Path:
    listing = _run(
        ["apt-cache", "search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64"],
        "Could not ask apt for kernel packages",
    )
    candidates = kernel_candidates([line.split(" - ")[0].strip() for line in listing.splitlines()])
    if not candidates:
        raise LabError(f"apt knows no linux-image-6.1.0-*-amd64 package; run apt-get update, or set {KERNEL_ENV} to a kernel file.")
    errors = []
    for package in candidates[:3]:  # a mirror may lag behind its index: fall back to older ABIs
        result = subprocess.run(["apt-get", "download", "-q", package], cwd=work, capture_output=True, text=True)
        debs = list(work.glob(f"{package}_*.deb"))
        if result.returncode == 0 and debs:
            return debs[0]
        errors.append(f"{package}: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no file'}")
    raise LabError(f"Could not download a guest kernel ({'; '.join(errors)}); set {KERNEL_ENV} to a kernel file instead.")


def _run(argv: list[str], what: str) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise LabError(f"{what}: {argv[0]} is not installed.") from None
    if result.returncode != 0:
        raise LabError(f"{what}: {result.stderr.strip() or f'{argv[0]} exited with {result.returncode}'}.")
    return result.stdout


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def remove_cached_image(cache_dir: Path) -> None:
    """Forget the cached kernel and initrds (the next guest rebuilds them)."""
    for path in [*cache_dir.glob("vmlinuz-*"), *cache_dir.glob("initrd-*.img")]:
        path.unlink(missing_ok=True)
    shutil.rmtree(cache_dir / "unpacked", ignore_errors=True)
