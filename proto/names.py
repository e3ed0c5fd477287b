"""Name constraints shared by every message, and the one rule that turns a host
name into a NATS subject token.

- A **VM name** is data, never a subject token or a KV key: any name libvirt
  accepts passes (dots, spaces, UTF-8), up to 255 characters (libvirt keeps a
  `<name>.xml` per domain, so its own limit is the file system's 255 bytes).
  Only control characters and '/' are refused; libvirt refuses both as well.
- A **host name** is an RFC 1123 name, FQDNs included: dot-separated labels of
  ASCII letters, digits and '-', each 1-63 characters that neither start nor
  end with '-', at most 253 characters in all. Its subject token is the name
  with every '.' replaced by '_' (`hv1.dc1.example.com` ->
  `hv1_dc1_example_com`). Host names never hold '_', so no two hosts share a
  token, and one NATS permission per token pins an agent to its own subjects.
  Names are compared as written: use one spelling (lower case) per host.
"""

import re
from typing import Annotated

import msgspec

# Anchored with \Z: Python's `$` also matches before a final newline.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME_PATTERN = rf"^{_LABEL}(?:\.{_LABEL})*\Z"
HOST_NAME_MAX = 253
# C0 and C1 control characters (newline, tab, escape, DEL, ...) and '/'.
_VM_NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f/]+\Z"
VM_NAME_MAX = 255

HostName = Annotated[
    str,
    msgspec.Meta(
        pattern=HOST_NAME_PATTERN,
        max_length=HOST_NAME_MAX,
        description="host name: RFC 1123 labels (letters, digits, '-') joined by '.', at most 253 characters",
    ),
]
VmName = Annotated[
    str,
    msgspec.Meta(
        pattern=_VM_NAME_PATTERN,
        min_length=1,
        max_length=VM_NAME_MAX,
        description="VM name: 1 to 255 characters, no control characters and no '/'",
    ),
]
_SESSION_ID_PATTERN = r"^[a-z0-9]{6,32}\Z"
SessionId = Annotated[
    str,
    msgspec.Meta(pattern=_SESSION_ID_PATTERN, description="session id"),
]
# What each pattern means, for error messages (msgspec names only the regex).
PATTERN_MEANINGS = {
    HOST_NAME_PATTERN: "a host name (RFC 1123: labels of letters, digits and '-', joined by '.')",
    _VM_NAME_PATTERN: "a VM name (no control characters, no '/')",
    _SESSION_ID_PATTERN: "a session id (6 to 32 lower-case letters and digits)",
}
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]

_HOST_NAME = re.compile(HOST_NAME_PATTERN)
_VM_NAME = re.compile(_VM_NAME_PATTERN)


def host_token(host: str) -> str:
    """The subject token of a host name: '.' becomes '_' (see the module's rule)."""
    return host.replace(".", "_")


def host_name_problem(host: str) -> str | None:
    """Why `host` is not a valid host name, as a sentence; None when it is."""
    if not host:
        return "a host name cannot be empty"
    if len(host) > HOST_NAME_MAX:
        return f"a host name has at most {HOST_NAME_MAX} characters, not {len(host)}"
    if not _HOST_NAME.match(host):
        return (
            f"{host!r} is not a host name: use RFC 1123 labels (letters, digits and '-', "
            "not starting or ending with '-', at most 63 each) joined by '.'"
        )
    return None


def vm_name_problem(name: str) -> str | None:
    """Why Ferry cannot carry a VM of this name, as a sentence; None when it can."""
    if not name:
        return "a VM name cannot be empty"
    if len(name) > VM_NAME_MAX:
        return f"a VM name has at most {VM_NAME_MAX} characters, not {len(name)}"
    if not _VM_NAME.match(name):
        return f"the VM name {name!r} holds a control character or '/'"
    return None


def printable(text: str) -> str:
    """`text` with control and other unprintable characters written as escapes
    (`\\x1b`, `\\u200b`): text from a host is shown as text, never as terminal codes."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)
