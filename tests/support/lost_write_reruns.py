"""Lab tests run once more when QEMU, not Ferry, broke a guest in a move.

Hooks for tests/lab/conftest.py (imported there). A lab test that fails while
one of its guests shows the signs of QEMU 7.2's TCG lost-write bug
(lab/lost_writes.py) fails as QemuLostGuestWrites, with the signs in its
message, and pytest-rerunfailures runs it once more. Other failures are left as
they are. A test finds its lab in the ``lab`` fixture and its guests in
``item.lab_guests`` (set by ``guest_factory``).
"""

from __future__ import annotations

import pytest

LOST_WRITES = "QEMU lost guest writes"


class QemuLostGuestWrites(AssertionError):
    """A lab test failed and a guest it moved crashed or hung on arrival (lab/lost_writes.py)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("lab") is not None:
            # pytest-rerunfailures runs the test again only for this failure.
            item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=[QemuLostGuestWrites]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    try:
        return (yield)
    except Exception as failure:
        signs = lost_write_signs_of(item)
        if signs:
            raise QemuLostGuestWrites(f"{LOST_WRITES} in a TCG move ({signs}); the test failed with: {failure}") from failure
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
