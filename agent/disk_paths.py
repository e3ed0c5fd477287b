"""Which disk paths a `prepare` request may make this agent touch. Pure: paths in,
a sentence (the refusal) or None out; the caller resolves symlinks.

A prepare request names the incoming VM's disks as its domain XML does. The
destination does two things with them:

- It **creates** an empty image for each disk copied along (storage copy). It
  creates only inside its own images folder: the path, as the domain names it,
  lies strictly below the folder, has no `..`, and the place the agent would
  write resolves (symlinks followed) to a place still inside the folder as the
  agent sees it. A request naming `/etc/...`, `/dev/...` or a symlink leading
  out is refused, whatever it claims about the disk.
- It **checks** that a disk on shared storage is there. Shared storage may live
  anywhere (an NFS mount, a SAN block device under /dev), and the check only
  asks whether the path exists, so any absolute, normalised path passes.

Every path must be absolute, without `..` or '.' steps, empty steps, NUL or
other control characters: libvirt names disks that way, and a path that is not
written so is a forged request, not a VM.
"""

import posixpath
from pathlib import Path, PurePosixPath

from ferry.agent.config import AgentConfig
from ferry.agent.hypervisor.disks import ImagesFolder

# Longer than any path Linux accepts (PATH_MAX is 4096 bytes).
PATH_MAX = 4096


def images_folder(config: AgentConfig) -> ImagesFolder:
    """The agent's images folder, as it sees it and as the domain XML names it."""
    return ImagesFolder(
        host_dir=Path(config.images_dir),
        domain_dir=PurePosixPath(config.images_dir_in_domain or config.images_dir),
    )


def path_problem(path: str) -> str | None:
    """Why `path` is not a disk path as libvirt writes one; None when it is."""
    if not path:
        return "a disk path cannot be empty"
    if len(path) > PATH_MAX:
        return f"a disk path has at most {PATH_MAX} characters, not {len(path)}"
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in path):
        return f"the disk path {path!r} holds a control character"
    if not path.startswith("/"):
        return f"the disk path {path!r} is not absolute"
    if posixpath.normpath(path) != path or path.startswith("//"):
        return f"the disk path {path!r} is not written plainly (it has '..', '.', '//' or a trailing '/')"
    return None


def copy_target_problem(path: str, images: ImagesFolder) -> str | None:
    """Why this agent may not create an image at `path` (as the domain names it);
    None when it may. `images` is the agent's folder; symlinks are judged by
    `resolved_target_problem` once the agent has resolved the path."""
    problem = path_problem(path)
    if problem is not None:
        return problem
    domain_path = PurePosixPath(path)
    if domain_path == images.domain_dir or not domain_path.is_relative_to(images.domain_dir):
        return f"{path} is outside this host's images folder {images.domain_dir}: it creates disks only there"
    return None


def resolved_target_problem(path: str, resolved: str, resolved_folder: str) -> str | None:
    """Why an image at `path` may not be created when the agent's path for it
    resolves to `resolved` and the images folder to `resolved_folder` (both with
    every symlink followed, as os.path.realpath does); None when it may."""
    target, folder = PurePosixPath(resolved), PurePosixPath(resolved_folder)
    if target == folder or not target.is_relative_to(folder):
        return f"{path} leads out of this host's images folder (to {resolved}): it creates disks only inside it"
    return None
