"""A failed lab test names the lost-write signs of the guests it moved, and is never
run twice. Run with pytester and a stand-in lab."""

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
import pytest
from tests.support.lost_write_report import pytest_runtest_call

class StandInLab:
    signs = {"moved-1": "its kernel crashed on hv2 after it had run on hv1: Kernel panic"}
    def lost_write_signs(self, guest):
        return self.signs.get(guest)

@pytest.fixture
def lab(request):
    return StandInLab()
"""

TESTS = """
import pytest
pytestmark = pytest.mark.lab

def test_a_guest_broken_in_a_move_is_named(lab, request):
    request.node.lab_guests = ["moved-1"]
    assert False, "hv2 does not report moved-1 running"

def test_any_other_failure_stays_as_it_is(lab, request):
    request.node.lab_guests = ["quiet-1"]
    assert False, "the session ended failed"

def test_a_passing_test_is_not_touched(lab, request):
    request.node.lab_guests = ["moved-1"]
"""


def test_a_failure_with_lost_write_signs_says_so_once(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_stand_in=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:asyncio", "-W", "ignore::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        ["*GuestBrokenInMove: a moved guest shows lost-write signs (moved-1: its kernel crashed on hv2*"
         "the test failed with: hv2 does not report moved-1 running*"]
    )
    assert "the session ended failed" in result.stdout.str() and "rerun" not in result.stdout.lines[-1]
