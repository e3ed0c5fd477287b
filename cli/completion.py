"""`ferry completion bash|zsh`: a static completion script made from the parser by
shtab, so completing costs no Python start-up at each <Tab>.

    source <(ferry completion bash)                          # in ~/.bashrc
    ferry completion zsh > "${fpath[1]}/_ferry"              # zsh, then compinit
"""

import argparse
import sys

import shtab

SHELLS = ("bash", "zsh")
# Options that name a file: the shell completes paths for them.
_FILE_OPTIONS = {"config", "identity", "creds", "tls_ca", "tls_cert", "tls_key"}


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    for action in parser._actions:
        if action.dest in _FILE_OPTIONS:
            action.complete = shtab.FILE  # type: ignore[attr-defined]  # shtab reads this attribute
    return shtab.complete(parser, shell=shell)


def add_command(sub: argparse._SubParsersAction, parser: argparse.ArgumentParser) -> None:
    """`parser`: the whole `ferry` parser, which the script describes."""
    completion = sub.add_parser(
        "completion", help="print a shell completion script (bash or zsh)",
        description="Print a completion script: `source <(ferry completion bash)` in ~/.bashrc, or for zsh "
        "`ferry completion zsh > \"${fpath[1]}/_ferry\"`.",
    )
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(local=lambda args: _print(parser, args.shell))


def _print(parser: argparse.ArgumentParser, shell: str) -> int:
    sys.stdout.write(completion_script(parser, shell))
    return 0
