"""The lab's second run for tests broken by QEMU's TCG lost-write bug: only then,
only once, with the signs in the report. Run with pytester and a stand-in lab."""

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
import pytest
from tests.support.lost_write_reruns import pytest_collection_modifyitems, pytest_runtest_call

class StandInLab:
    signs = {"moved-1": "its kernel crashed on hv2, where it had moved: Kernel panic"}
    def lost_write_signs(self, guest):
        return self.signs.get(guest)

@pytest.fixture
def lab(request):
    return StandInLab()
"""

TESTS = """
import pytest
pytestmark = pytest.mark.lab
runs = {}

def count(name):
    runs[name] = runs.get(name, 0) + 1
    return runs[name]

def test_a_guest_broken_by_qemu_passes_on_its_second_run(lab, request):
    request.node.lab_guests = ["moved-1"]
    assert count("qemu") > 1, "hv2 does not report moved-1 running"

def test_a_guest_broken_by_qemu_twice_fails(lab, request):
    request.node.lab_guests = ["moved-1"]
    assert False, "hv2 does not report moved-1 running"

def test_any_other_failure_is_not_run_again(lab, request):
    request.node.lab_guests = ["quiet-1"]
    count("other")
    assert False, "the session ended failed"

def test_a_test_without_a_lab_guest_is_not_run_again(lab):
    assert False, "no guest"
"""


def test_only_a_failure_with_lost_write_signs_runs_once_more(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_stand_in=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:asyncio", "-W", "ignore::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(["*3 failed, 1 passed, 2 rerun*"])
    result.stdout.fnmatch_lines(
        ["*QemuLostGuestWrites: QEMU lost guest writes in a TCG move (moved-1: its kernel crashed on hv2*"
         "the test failed with: hv2 does not report moved-1 running*"]
    )
    assert "the session ended failed" in result.stdout.str()
