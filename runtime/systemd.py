"""systemd's service notifications (sd_notify(3)): READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

Written here rather than taken from PyPI: the protocol is one datagram per message
on a unix socket, about forty lines. `sdnotify` is unmaintained and knows neither
abstract socket names nor the watchdog variables; `systemd-python` needs libsystemd's
headers and a C compiler, which the coordinator must install without.

Nothing here raises into a daemon: without `$NOTIFY_SOCKET` (not started by
systemd) every call does nothing, and a message that cannot be sent is logged once.
"""

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import structlog

# How often STATUS= is refreshed when systemd asked for no watchdog.
STATUS_EVERY_SECONDS = 5.0


def notify_address(value: str | None) -> str | bytes | None:
    """Where `$NOTIFY_SOCKET` says to send: a path, an abstract name ('@' becomes
    the leading NUL byte), or None (unset, or a form this module does not speak,
    such as systemd's vsock: addresses for virtual machines)."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_seconds(usec: str | None, watchdog_pid: str | None, pid: int) -> float | None:
    """The watchdog timeout systemd set for this process (`$WATCHDOG_USEC`), in
    seconds; None when there is none, when it cannot be read, or when
    `$WATCHDOG_PID` names another process (a child that inherited the variables)."""
    if not usec:
        return None
    if watchdog_pid:
        try:
            if int(watchdog_pid) != pid:
                return None
        except ValueError:
            return None
    try:
        micros = int(usec)
    except ValueError:
        return None
    return micros / 1_000_000 if micros > 0 else None


def message(**fields: str | int) -> bytes:
    """One notification: `KEY=value` lines (newlines inside a value would start a
    new assignment, so they become spaces)."""
    return "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()).encode()


class Notifier:
    """Tells systemd how this daemon is doing; every method is safe to call without systemd."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None, *, log=None) -> None:
        self.address = address
        # Half the timeout between pings, as sd_watchdog_enabled(3) advises.
        self.watchdog_every = watchdog / 2 if address is not None and watchdog else None
        self._log = log or structlog.get_logger()
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> "Notifier":
        environ = os.environ if environ is None else environ
        return cls(
            notify_address(environ.get("NOTIFY_SOCKET")),
            watchdog_seconds(environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID"), os.getpid() if pid is None else pid),
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one notification; False when it could not be (or there is no systemd)."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # A full queue on systemd's side must not block the event loop: drop the message.
                sock.setblocking(False)
                sock.sendto(message(**fields), self.address)
        except (OSError, ValueError) as exc:
            if not self._failed:
                self._log.warning("systemd_notify_failed", socket=str(self.address), error=str(exc))
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(READY=1, STATUS=status) if status else self.send(READY=1)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def stopping(self) -> bool:
        return self.send(STOPPING=1, STATUS="stopping")

    async def keep_alive(self, status: Callable[[], str] | None = None) -> None:
        """Until cancelled: WATCHDOG=1 at half the watchdog timeout (when systemd set
        one), with STATUS= whenever `status()` says something new. A task on the
        daemon's event loop: if the loop is stuck, the pings stop and systemd
        restarts the daemon, which is the point."""
        if self.address is None or (self.watchdog_every is None and status is None):
            return
        every = self.watchdog_every or STATUS_EVERY_SECONDS
        said = None
        while True:
            fields: dict[str, str | int] = {}
            if self.watchdog_every is not None:
                fields["WATCHDOG"] = 1
            if status is not None:
                try:
                    text = status()
                except Exception:
                    # A status is a nicety; it must never stop the pings.
                    self._log.exception("systemd_status_failed")
                    text = said
                if text is not None and text != said:
                    fields["STATUS"] = said = text
            if fields:
                self.send(**fields)
            await asyncio.sleep(every)
