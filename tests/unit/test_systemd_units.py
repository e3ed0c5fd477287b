"""The shipped units pass `systemd-analyze verify` and keep their sandbox
(`systemd-analyze security`): offline modes only, PID 1 need not be systemd.

systemd-analyze is required, not optional: lab/debian-packages.sh installs it
(Debian package `systemd`); without it these tests fail and say so."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import script

SYSTEMD = Path(__file__).parents[2] / "systemd"
# Exposure levels allowed (lower is safer; 0-10). Reached: coordinator 1.1, agent 1.8
# (root, one capability, images_dir writable: the exceptions its unit explains).
# A change that loosens a unit must say why here.
MAX_EXPOSURE = {"ferry-coordinator.service": 2.5, "ferry-agent.service": 1.8}
UNITS = {"ferry-coordinator.service": "ferry-coordinator", "ferry-agent.service": "ferry-agent"}
EXPOSURE_LINE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+)")


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze") or ("/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None)
    if found is None:
        pytest.fail("systemd-analyze is missing: install the Debian package `systemd` (lab/debian-packages.sh does)")
    return found


def local_copy(unit: str, folder: Path) -> Path:
    """The unit with ExecStart= at this virtualenv's console script (verify checks that it exists)."""
    text = (SYSTEMD / unit).read_text()
    program = UNITS[unit]
    assert f"ExecStart=/opt/ferry/bin/{program} " in text
    copy = folder / unit
    copy.write_text(text.replace(f"ExecStart=/opt/ferry/bin/{program} ", f"ExecStart={script(program)} "))
    return copy


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_verifies(unit, tmp_path):
    copy = local_copy(unit, tmp_path)
    done = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    # Verify may talk about the host's own units; nothing may be about ours.
    ours = [line for line in (done.stdout + done.stderr).splitlines() if unit in line or str(tmp_path) in line]
    assert (done.returncode, ours) == (0, [])


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_exposure(unit, tmp_path):
    copy = local_copy(unit, tmp_path)
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    found = EXPOSURE_LINE.search(done.stdout + done.stderr)
    assert found is not None, done.stdout + done.stderr
    assert found.group(1) == unit
    assert float(found.group(2)) <= MAX_EXPOSURE[unit], done.stdout


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_units_are_systemd_native(unit):
    lines = (SYSTEMD / unit).read_text().splitlines()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30s", "RestartPreventExitStatus=2"):
        assert line in lines, (unit, line)
    # The secrets are credentials, named in the example configs as ${CREDENTIALS_DIRECTORY}/NAME.
    assert "LoadCredential=identity:/etc/ferry/credentials/identity" in lines
    assert "LoadCredential=nats-ca.pem:/etc/ferry/credentials/nats-ca.pem" in lines


@pytest.mark.parametrize("example", ["agent.toml.example", "coordinator.toml.example"])
def test_example_configs_name_the_credentials_the_units_load(example):
    text = (SYSTEMD / example).read_text()
    assert 'identity = "${CREDENTIALS_DIRECTORY}/identity"' in text
    assert 'tls_ca = "${CREDENTIALS_DIRECTORY}/nats-ca.pem"' in text
