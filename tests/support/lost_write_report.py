"""A lab test that fails says so when a guest it moved shows lost-write signs.

Hook for tests/lab/conftest.py (imported there). The lab runs QEMU >= 9.0,
which fixed the TCG dirty-tracking bug that made moved guests crash or hang
(README, "Supported versions"), so nothing is run twice. But a guest that
crashes or hangs on the host it moved to is the first thing to know about a
failure: the report says so, with the signs (lab/lost_writes.py), before the
original failure. A test finds its lab in the ``lab`` fixture and its guests
in ``item.lab_guests`` (set by ``guest_factory``).
"""

from __future__ import annotations

import pytest

LOST_WRITES = "a moved guest shows lost-write signs"


class GuestBrokenInMove(AssertionError):
    """A lab test failed and a guest it moved crashed or hung on arrival (lab/lost_writes.py)."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    try:
        return (yield)
    except Exception as failure:
        signs = lost_write_signs_of(item)
        if signs:
            raise GuestBrokenInMove(f"{LOST_WRITES} ({signs}); the test failed with: {failure}") from failure
        raise


def lost_write_signs_of(item: pytest.Item) -> str:
    lab = getattr(item, "funcargs", {}).get("lab")
    if lab is None:
        return ""
    found = []
    for guest in getattr(item, "lab_guests", ()):
        try:
            signs = lab.lost_write_signs(guest)
        except Exception as error:  # a check that cannot run is no sign
            signs = None
            print(f"could not look for lost-write signs on {guest}: {error}")
        if signs:
            found.append(f"{guest}: {signs}")
    return "; ".join(found)
