"""Name constraints shared by every message.

Host and VM names become NATS subject tokens, so they may not contain `.`,
`*`, `>` or white space; the patterns are anchored so a partial match never
passes.
"""

from typing import Annotated

import msgspec

_TOKEN = r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,62}$"

HostName = Annotated[
    str,
    msgspec.Meta(
        pattern=_TOKEN,
        description="host name: letters, digits, '_' and '-', at most 63 characters",
    ),
]
VmName = Annotated[
    str,
    msgspec.Meta(
        pattern=_TOKEN,
        description="VM name: letters, digits, '_' and '-', at most 63 characters",
    ),
]
SessionId = Annotated[
    str,
    msgspec.Meta(pattern=r"^[a-z0-9]{6,32}$", description="session id"),
]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
