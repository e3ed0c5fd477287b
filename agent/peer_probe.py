"""Whether a lost host's libvirtd still answers, seen from this host.

The coordinator asks two peers of a host whose agent went silent before it
fences it: an agent that died while its libvirtd (and guests) run must not
cost the host its power. The probe opens a TCP connection to the libvirtd
address and port of the host's peer URI, and closes it: an accepted
connection means its libvirtd listens. The URI is never handed to libvirt
(a `qemu+ext://` or `?command=` URI would run a program here), and only the
schemes with a libvirtd port of their own are probed.
"""

import asyncio
import time
from urllib.parse import urlsplit

from ferry.proto.agent import ProbeReply, ProbeRequest

# libvirtd's own ports (libvirtd.conf tcp_port, tls_port).
LIBVIRTD_PORTS = {"qemu+tls": 16514, "qemu+tcp": 16509}


def probe_target(uri: str) -> tuple[str, int] | str:
    """(address, port) to try, or why this URI cannot be probed (a sentence)."""
    try:
        parts = urlsplit(uri.strip())
        port = parts.port
    except ValueError:
        return f"{uri!r} is not a libvirt URI"
    scheme = parts.scheme.lower()
    if scheme not in LIBVIRTD_PORTS:
        return f"a {scheme or 'scheme-less'} URI is not probed: only {', '.join(LIBVIRTD_PORTS)} reach libvirtd itself"
    if not parts.hostname:
        return f"{uri!r} names no host"
    return parts.hostname, port or LIBVIRTD_PORTS[scheme]


async def probe(request: ProbeRequest, *, me: str) -> ProbeReply:
    started = time.monotonic()
    target = probe_target(request.uri)
    if isinstance(target, str):
        return ProbeReply(host=me, uri=request.uri, answered=False, detail=f"not probed: {target}")
    address, port = target
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), request.seconds)
    except TimeoutError:
        answered, detail = False, f"no answer from {address}:{port} within {request.seconds:g} s"
    except OSError as error:
        answered, detail = False, f"{address}:{port} refused or unreachable ({error.strerror or error})"
    else:
        writer.close()
        answered, detail = True, f"libvirtd at {address}:{port} accepts connections"
    return ProbeReply(host=me, uri=request.uri, answered=answered, detail=detail, seconds=round(time.monotonic() - started, 3))
