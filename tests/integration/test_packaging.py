"""The package as a user gets it: a wheel built with the setuptools floor that
pyproject.toml declares holds only `ferry` at its top, and installing it without
`[agent]` (with every C compiler call failing) gives a `ferry` CLI and a
`ferry-coordinator` that work against a real nats-server."""

import os
import re
import shutil
import subprocess
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT, coordinator_toml
from tests.support.secured import cli_args
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

SOURCES = ["pyproject.toml", "README.md", "LICENSE", "proto", "runtime", "agent", "coordinator", "cli", "lab"]


def run(*argv: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(argv)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


def setuptools_floor() -> str:
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    (floor,) = [re.fullmatch(r"setuptools>=([\d.]+)", r).group(1) for r in requires if r.startswith("setuptools")]
    return floor


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, a fresh venv with only it and its binary dependencies installed)."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    for name in SOURCES:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(src, source / name)
    builder = root / "builder"
    venv.create(builder, with_pip=True)
    run(str(builder / "bin/pip"), "install", "-q", f"setuptools=={setuptools_floor()}")
    run(str(builder / "bin/pip"), "wheel", "-q", "--no-build-isolation", "--no-deps", "-w", str(root / "dist"), str(source))
    (wheel,) = (root / "dist").glob("ferry-*.whl")
    user = root / "user"
    venv.create(user, with_pip=True)
    # Any C compiler call fails: whatever is not a wheel must be pure Python.
    no_compiler = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false", "LDSHARED": "/bin/false"}
    run(str(user / "bin/pip"), "install", "-q", "--prefer-binary", str(wheel), env=no_compiler)
    return wheel, user


def test_the_wheel_holds_only_ferry_at_its_top_and_the_licence(built):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {n.split("/")[0] for n in names} == {"ferry", wheel.name.split("-py3")[0] + ".dist-info"}
    assert {n.split("/")[1] for n in names if n.startswith("ferry/")} >= {"proto", "runtime", "agent", "coordinator", "cli", "lab"}
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "Apache License" in (REPO_ROOT / "LICENSE").read_text()[:200]


async def test_without_the_agent_extra_the_cli_and_coordinator_work(built, nats_server, tmp_path):
    _, user = built
    python = str(user / "bin/python")
    run(python, "-c", "import ferry.proto, ferry.cli, ferry.coordinator, ferry.runtime")
    assert subprocess.run([python, "-c", "import libvirt"], capture_output=True).returncode != 0
    env = {**os.environ, "PATH": f"{user / 'bin'}:/usr/bin:/bin"}
    config = tmp_path / "coordinator.toml"
    config.write_text(coordinator_toml(nats_server.url))
    coordinator = subprocess.Popen(
        [str(user / "bin/ferry-coordinator"), "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "coordinator.log", "w"), env=env,
    )
    try:
        async def answered():
            out = subprocess.run([str(user / "bin/ferry"), *cli_args(nats_server.url), "hosts"], capture_output=True, text=True)
            return out if out.returncode == 0 else None

        out = await eventually(answered, timeout=20, every=0.3, what="ferry hosts answered by the slim coordinator")
        assert out.stdout.strip() == "no hosts have reported yet"
    finally:
        coordinator.terminate()
        coordinator.wait(timeout=10)


def test_an_agent_without_libvirt_python_says_what_to_install(built, tmp_path):
    _, user = built
    config = tmp_path / "agent.toml"
    config.write_text(f'host = "hv1"\nimages_dir = "{tmp_path}"\n[hypervisor]\npeer_uri = "qemu+tls://hv1/system"\n')
    out = subprocess.run([str(user / "bin/ferry-agent"), "--config", str(config), "--check-config"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "libvirt-python is not installed: pip install 'ferry[agent]'" in out.stderr
