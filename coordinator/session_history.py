"""What session records say after the fact: when each session held an admission
slot, and how many held one at once (tests, the demo and operators check the
limits from the records alone). Pure."""

from collections import defaultdict
from collections.abc import Callable, Iterable

from ferry.proto.session import Session, SessionState

S = SessionState


def admitted_spans(session: Session) -> list[tuple[float, float]]:
    """When the session held a slot: from admission (first `preparing`) until it
    went back to the queue or ended. A decline to the next candidate keeps the slot."""
    spans, start = [], None
    for t in session.history:
        if t.state == S.PREPARING and start is None:
            start = t.at
        elif (t.state == S.QUEUED or t.state.terminal) and start is not None:
            spans.append((start, t.at))
            start = None
    if start is not None:
        spans.append((start, float("inf")))
    return spans


def max_overlap(sessions: Iterable[Session], *, key: Callable[[Session], str]) -> dict[str, int]:
    """The most sessions holding a slot at the same moment, per key (source, dest, ...)."""
    edges: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for s in sessions:
        for start, end in admitted_spans(s):
            edges[key(s)] += [(start, 1), (end, -1)]
    peaks = {}
    for k, points in edges.items():
        # At equal times an end counts before a start: a slot handed over is not two.
        points.sort(key=lambda p: (p[0], p[1]))
        level = peak = 0
        for _, step in points:
            level += step
            peak = max(peak, level)
        peaks[k] = peak
    return peaks
