"""Every installed program answers --version (also after any `ferry` command)
without connecting anywhere, and `ferry completion` gives scripts the shells load."""

import shutil
import subprocess

import pytest

from ferry.cli.main import build_parser
from ferry.runtime.version import VERSION
from tests.support.processes import script

pytestmark = pytest.mark.integration

# Nothing listens there: a program that tried to connect would fail.
NOWHERE = ["--server", "nats://127.0.0.1:1"]


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def ferry_commands() -> list[str]:
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return list(sub.choices)


@pytest.mark.parametrize("program", ["ferry", "ferry-admin", "ferry-agent", "ferry-coordinator", "ferry-lab"])
def test_every_program_prints_its_version(program):
    result = run([script(program), "--version"])
    assert (result.returncode, result.stdout, result.stderr) == (0, f"ferry {VERSION}\n", "")


def test_version_after_every_ferry_command():
    for command in ferry_commands():
        result = run([script("ferry"), *NOWHERE, command, "--version"])
        assert (result.returncode, result.stdout, result.stderr) == (0, f"ferry {VERSION}\n", ""), command


def test_the_bash_script_loads_and_completes_commands(tmp_path):
    result = run([script("ferry"), "completion", "bash"])
    assert result.returncode == 0, result.stderr
    path = tmp_path / "ferry.bash"
    path.write_text(result.stdout)
    assert run(["bash", "-n", str(path)]).returncode == 0
    loaded = run(["bash", "-c", f'source <({script("ferry")} completion bash) && complete -p ferry'])
    assert loaded.returncode == 0 and loaded.stdout.strip().endswith(" ferry"), loaded.stderr
    # What <Tab> offers after `ferry cor` and after `ferry cancel --j`.
    offered = run(["bash", "-c", f"""source {path}
COMP_WORDS=(ferry cor); COMP_CWORD=1; _shtab_ferry; echo "${{COMPREPLY[@]}}"
COMP_WORDS=(ferry cancel --j); COMP_CWORD=2; _shtab_ferry; echo "${{COMPREPLY[@]}}"
"""])
    assert offered.stdout.splitlines() == ["cordon", "--json"], offered.stderr


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed here (the bash script is tested)")
def test_the_zsh_script_loads(tmp_path):
    result = run([script("ferry"), "completion", "zsh"])
    assert result.returncode == 0 and result.stdout.startswith("#compdef ferry")
    path = tmp_path / "_ferry"
    path.write_text(result.stdout)
    assert run(["zsh", "-n", str(path)]).returncode == 0
    # -f: no user start-up files; compinit -D: no dump file left in $HOME.
    loaded = run(["zsh", "-f", "-c", f"fpath=({tmp_path} $fpath); autoload -Uz compinit && compinit -u -D && print $_comps[ferry]"])
    assert loaded.stdout.strip() == "_ferry", loaded.stderr


def test_an_unknown_shell_is_refused():
    result = run([script("ferry"), "completion", "fish"])
    assert result.returncode == 2 and "invalid choice: 'fish'" in result.stderr
