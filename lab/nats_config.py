"""The lab's NATS cluster on paper: URLs and each server's config text. Pure, no I/O.

Three servers, as in production, so JetStream keeps its R3 streams through the
loss of any one of them. All listen on 127.0.0.1, each on its own client port
and cluster (route) port; every server's config lists the routes of all three
(a server ignores the route to itself), so any one can be restarted alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

NATS_HOST = "127.0.0.1"
CLUSTER_NAME = "ferry-lab"


def nats_url(port: int) -> str:
    # The lab's servers take TLS only (lab/nats_security.py).
    return f"tls://{NATS_HOST}:{port}"


def route_url(port: int) -> str:
    return f"nats-route://{NATS_HOST}:{port}"


def nats_server_conf(
    name: str, client_ports: Mapping[str, int], route_ports: Mapping[str, int], store_dir: Path, route_tls: str = ""
) -> str:
    """The config of server ``name``; ``client_ports`` and ``route_ports`` hold every
    server of the cluster (name -> port), ``store_dir`` is this server's own JetStream store,
    ``route_tls`` the `tls` block of its routes (NatsSecurity.route_tls)."""
    routes = ", ".join(route_url(port) for port in route_ports.values())
    return f"""\
# Written by ferry-lab: server {name} of the lab's NATS cluster.
server_name: {name}
listen: "{NATS_HOST}:{client_ports[name]}"
jetstream {{
  store_dir: {json.dumps(str(store_dir))}
}}
cluster {{
  name: {CLUSTER_NAME}
  listen: "{NATS_HOST}:{route_ports[name]}"
  routes: [ {routes} ]
{route_tls}}}
"""
