"""Migration sessions: the record book, the scheduler, the driver (a
reconciler over coordinator/session_steps.py), the bandwidth share, and the
API face that composes them."""

from ferry.coordinator.sessions.book import Superseded
from ferry.coordinator.sessions.manager import SessionManager

__all__ = ["SessionManager", "Superseded"]
