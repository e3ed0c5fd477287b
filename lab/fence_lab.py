"""fence_lab: the lab's fence device, a fence agent as fence-agents writes them.

    echo -e "action=off\\nplug=hv1" | fence_lab
    fence_lab -o status -n hv1 [--lab-dir DIR]

Options come on stdin as `name=value` lines (what Ferry's coordinator and
Pacemaker send), or on the command line for a person. `plug` names the lab
host; `lab_dir` the lab (default /var/tmp/ferry-lab).

- `off`: the host loses power: its agent, its libvirtd, its QEMU processes and
  its virtlockd are killed at once (SIGKILL), nothing cleans up (the disk leases
  its virtlockd held are free). Exit 0 once they are gone.
- `on`: its virtlockd, libvirtd and agent start again (the guests stay off, as
  after a power cut). Exit 0.
- `status`: exit 0 when anything of the host runs, 2 when nothing does (honest:
  the processes are looked at, not a flag), 1 when it cannot tell.
- `monitor`: exit 0 when the lab answers. `metadata`: the agent's description.

A broken device, for tests of a fence that fails: while the file `fence-broken`
exists in the host's lab folder (`DIR/hv1/fence-broken`), `off` fails (exit 1,
"does not answer") and powers nothing off.

Exit 1 with a sentence on stderr for anything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ferry.lab.errors import LabError
from ferry.lab.layout import DEFAULT_DIR

EXIT_ON, EXIT_FAILED, EXIT_OFF = 0, 1, 2
ACTIONS = ("off", "on", "status", "monitor", "metadata")
# In a host's lab folder: its fence device fails (see the module's text).
BROKEN = "fence-broken"
METADATA = """<?xml version="1.0" ?>
<resource-agent name="fence_lab" shortdesc="Fence agent for Ferry's local libvirt lab">
<longdesc>Powers a lab host off (its agent, libvirtd and QEMU processes die at once) or on, and reports its power honestly.</longdesc>
<parameters>
  <parameter name="action" unique="0" required="1"><content type="string" default="status"/></parameter>
  <parameter name="plug" unique="0" required="1"><content type="string"/><shortdesc lang="en">Lab host name (hv1, ...)</shortdesc></parameter>
  <parameter name="lab_dir" unique="0" required="0"><content type="string" default="/var/tmp/ferry-lab"/></parameter>
</parameters>
<actions><action name="off"/><action name="on"/><action name="status"/><action name="monitor"/><action name="metadata"/></actions>
</resource-agent>
"""


def read_options(text: str) -> dict[str, str]:
    """`name=value` lines; blank lines and `#` comments skipped (as fence-agents do)."""
    options = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        options[name.strip()] = value.strip()
    return options


def run(options: dict[str, str]) -> tuple[int, str]:
    """The exit status and what to print for these options."""
    from ferry.lab.lab import Lab  # the lab's libvirt bindings only when they are used

    action = options.get("action", "status")
    if action not in ACTIONS:
        return EXIT_FAILED, f"fence_lab: action {action!r} is not one of {', '.join(ACTIONS)}"
    if action == "metadata":
        return EXIT_ON, METADATA
    try:
        lab = Lab.attach(Path(options.get("lab_dir") or DEFAULT_DIR))
        if action == "monitor":
            return EXIT_ON, "lab answers"
        host = options.get("plug", "")
        if not host:
            return EXIT_FAILED, "fence_lab: plug (the lab host's name) is required"
        lab.host(host)  # an unknown host is an error, not "off"
        if action == "off":
            if (lab.host(host).root / BROKEN).exists():
                return EXIT_FAILED, f"fence_lab: the fence device of {host} does not answer ({lab.host(host).root / BROKEN} exists)"
            stopped = lab.power_off(host)
            return EXIT_ON, f"Success: Powered OFF {host} ({', '.join(stopped) or 'nothing was running'})"
        if action == "on":
            lab.power_on(host)
            return EXIT_ON, f"Success: Powered ON {host}"
        running = lab.powered(host)
        return (EXIT_ON, f"Status: ON ({', '.join(running)})") if running else (EXIT_OFF, "Status: OFF")
    except LabError as error:
        return EXIT_FAILED, f"fence_lab: {error}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fence_lab", description="Fence agent for Ferry's local lab.")
    parser.add_argument("-o", "--action", choices=ACTIONS)
    parser.add_argument("-n", "--plug", help="the lab host (hv1, ...)")
    parser.add_argument("--lab-dir", help=f"the lab (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    if args.action is None and args.plug is None:
        options = read_options(sys.stdin.read(64 * 1024))
    else:
        options = {"action": args.action or "status", "plug": args.plug or ""}
    if args.lab_dir:
        options["lab_dir"] = args.lab_dir
    code, said = run(options)
    print(said, file=sys.stdout if code != EXIT_FAILED else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
