"""Which heartbeat an agent sends: its full report or a short beat. Pure.

A full report goes out at start, whenever its digest changes (VMs, health,
capacity, ...), when a coordinator asks (`ferry.agent.<host>.report`), and every
FULL_EVERY heartbeats in any case; in between, a HostBeat naming the digest of
the last full report. Short beats only once a coordinator has asked for a
report: a coordinator from before them would not understand one.
"""

from ferry.proto.host import HostBeat, HostStatus

# A full report at least this often (in heartbeats): a coordinator that missed
# the last one, or free memory drifting within its GiB, is caught up within a minute.
FULL_EVERY = 30


class Beats:
    def __init__(self, full_every: int = FULL_EVERY) -> None:
        self._full_every = full_every
        self.allowed = False
        self._wanted = True
        self._sent_digest = ""
        self._since_full = 0

    def ask(self, short_beats: bool) -> None:
        """A coordinator asked for a full report (and said whether it reads short beats)."""
        self._wanted = True
        self.allowed = self.allowed or short_beats

    def next(self, status: HostStatus) -> HostStatus | HostBeat:
        """What to send for `status` (its `digest` filled)."""
        due = self._wanted or status.digest != self._sent_digest or self._since_full >= self._full_every - 1
        if not self.allowed or due or not status.digest:
            self._wanted = False
            self._sent_digest = status.digest
            self._since_full = 0
            return status
        self._since_full += 1
        return HostBeat(
            host=status.host, seq=status.seq, boot_id=status.boot_id, sent_at=status.sent_at,
            interval=status.interval, digest=status.digest,
        )
