"""docs/operations.md is a guide whose commands work: its PKI and identity blocks
run, every config file in it passes the check its program has (`nats-server -t`,
`--check-config`, `systemd-analyze verify`, `nft -c`), every `ferry` and
`ferry-admin` line parses with the real command, and every other command is
one of the package and service commands a real host needs (which the lab runs
the equivalent of)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from ferry.cli import admin as ferry_admin
from ferry.cli import main as ferry_cli
from tests.support.processes import REPO_ROOT

pytestmark = pytest.mark.integration

GUIDE = REPO_ROOT / "docs" / "operations.md"
BIN = Path(sys.executable).parent
# Commands a guide for a real host may use that a test here cannot run for real
# (they change the machine: packages, services, firewall, files under /etc).
HOST_COMMANDS = {
    "apt-get", "echo", "python3", "/opt/ferry/bin/pip", "/opt/nats/bin/pip", "systemctl", "install",
    "virsh", "nft", "journalctl", "systemd-analyze", "ferry", "ferry-admin",
}
MARK = re.compile(r"<!-- test: (run|file (\S+)) -->")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    run: bool = False
    file: str = ""


def blocks(markdown: str) -> list[Block]:
    found, mark, lines, i = [], None, markdown.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if m := MARK.fullmatch(line.strip()):
            mark = m
        elif line.startswith("```"):
            lang, body = line[3:].strip(), []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            text = "\n".join(body) + "\n"
            found.append(Block(lang, text, run=bool(mark and mark.group(1) == "run"), file=(mark.group(2) or "") if mark else ""))
            mark = None
        elif line.strip():
            mark = None
        i += 1
    return found


def commands(script: str) -> list[list[str]]:
    """Each simple command of a shell block (continuations joined, split at ; && |)."""
    joined = script.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        for part in re.split(r"&&|;|\|", line):
            words = shlex.split(part, comments=True)
            if words:
                found.append(words)
    return found


def localised(text: str, root: Path) -> str:
    """The guide's paths moved under `root`, its programs to this venv's."""
    for path in ("/etc/ferry", "/etc/systemd/system", "/etc/nftables.conf", "/var/lib/nats", "/var/lib/ferry"):
        text = text.replace(path, f"{root}{path}")
    text = text.replace("/opt/ferry/bin/", f"{BIN}/").replace("/opt/nats/bin/", f"{BIN}/")
    return text


GUIDE_BLOCKS = blocks(GUIDE.read_text())


def test_the_guide_has_runnable_blocks_and_config_files():
    assert sum(b.run for b in GUIDE_BLOCKS) >= 5
    assert {b.file for b in GUIDE_BLOCKS} >= {"/etc/ferry/nats/nats-1.conf", "/etc/ferry/coordinator.toml", "/etc/ferry/agent.toml"}


def test_every_other_command_is_a_host_command_and_every_ferry_line_parses():
    for block in GUIDE_BLOCKS:
        if block.lang != "sh" or block.run:
            continue
        for words in commands(block.text):
            program = words[0]
            assert program in HOST_COMMANDS, f"docs/operations.md runs {program!r}, which no test covers: {' '.join(words)}"
            parser = {"ferry": ferry_cli.build_parser, "ferry-admin": ferry_admin.build_parser}.get(program)
            if parser is not None:
                try:
                    parser().parse_args(words[1:])
                except SystemExit:
                    pytest.fail(f"docs/operations.md: `{' '.join(words)}` does not parse")


def test_the_operators_config_file_is_valid_toml():
    for block in GUIDE_BLOCKS:
        if block.lang == "toml" and not block.file:
            assert tomllib.loads(block.text)


@pytest.mark.skipif(os.geteuid() != 0, reason="nft -c and systemd-analyze verify of system units need root")
def test_the_guides_blocks_run_and_its_files_pass_their_checks(tmp_path):
    missing = [tool for tool in ("openssl", "nft", "systemd-analyze", "promtool") if shutil.which(tool) is None]
    assert not missing, f"make deps installs {missing} (lab/debian-packages.sh)"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    written: dict[str, Path] = {}
    for block in GUIDE_BLOCKS:
        if block.file:
            target = Path(localised(block.file, tmp_path))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(localised(block.text, tmp_path))
            written[block.file] = target
            if block.file == "/etc/ferry/coordinator.toml":
                _credentials(tmp_path, "coordinators/coord-1.identity")
        if block.run:
            script = localised(block.text, tmp_path)
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO_ROOT, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"docs/operations.md block failed:\n{script}\n{done.stdout}\n{done.stderr}"

    agent = subprocess.run(
        [str(BIN / "ferry-agent"), "--config", str(written["/etc/ferry/agent.toml"]), "--check-config"],
        env={**env, "CREDENTIALS_DIRECTORY": str(_credentials(tmp_path, "hosts/hv1.identity", "hv1"))},
        capture_output=True, text=True, timeout=60,
    )
    assert agent.returncode == 0, agent.stderr
    nft = subprocess.run(["nft", "-c", "-f", str(written["/etc/nftables.conf"])], capture_output=True, text=True, timeout=60)
    assert nft.returncode == 0, nft.stderr
    unit = written["/etc/systemd/system/nats-server.service"]
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert unit.name not in verified.stderr, verified.stderr


def _credentials(root: Path, identity: str, name: str = "") -> Path:
    """What LoadCredential= gives a service: its identity and the NATS CA in one folder."""
    folder = root / "etc" / "ferry" / ("credentials" + (f"-{name}" if name else ""))
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for source, target in ((f"identities/{identity}", "identity"), ("pki/ca.pem", "nats-ca.pem")):
        shutil.copyfile(root / "etc" / "ferry" / source, folder / target)
        (folder / target).chmod(0o600)
    return folder
