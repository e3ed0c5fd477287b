"""Error codes and the one error a caller ever sees."""

import enum

import msgspec


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    UNKNOWN_HOST = "unknown_host"
    UNKNOWN_VM = "unknown_vm"
    HOST_LOST = "host_lost"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"
    # No coordinator leads at this moment (a takeover is under way): try again shortly.
    NO_LEADER = "no_leader"
    UNAUTHORIZED = "unauthorized"
    # Authenticated, but this identity may not do that (a viewer asking to migrate).
    FORBIDDEN = "forbidden"
    TIMEOUT = "timeout"
    # The agent requires an encrypted migration stream (its migration.require_tls).
    TLS_REQUIRED = "tls_required"
    # The source agent does not dial that libvirt peer URI (migration.allowed_peer_schemes).
    PEER_REFUSED = "peer_refused"
    # The hypervisor would not start a restarted VM: a disk is held by a running copy
    # (libvirt's lock manager or QEMU's image lock). Never tried on another host.
    DISK_LOCKED = "disk_locked"
    # The hypervisor would not start a restarted VM for another reason (its words follow).
    START_REFUSED = "start_refused"
    INTERNAL = "internal"


class ErrorReply(msgspec.Struct, frozen=True, tag="error"):
    """What a caller gets instead of a reply: a code for scripts, a sentence for people."""

    code: str
    message: str


class FerryError(Exception):
    """The only exception whose content may cross a process boundary."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message

    def to_reply(self) -> ErrorReply:
        return ErrorReply(code=self.code, message=self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
