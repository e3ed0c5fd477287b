"""Output to a pipe or a file is never wrapped or cropped, however wide a row."""

import io

from rich.table import Table

from ferry.cli.output import plain, plain_console


def test_a_row_wider_than_any_terminal_stays_one_whole_line():
    console = plain_console()
    console.file = io.StringIO()  # not a terminal, as under `| cat`
    table = Table(box=None, pad_edge=False)
    for column in ("HOST", "STATE", "CPU"):
        table.add_column(column)
    wide = "Intel(R) Xeon(R) Platinum " * 40
    for host in ("hv1", "hv2"):
        table.add_row(plain(host), "up (draining)", plain(wide))
    console.print(table)
    console.print(plain("leader: c1 " + "x" * 5000))
    lines = console.file.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[1].startswith("hv1") and wide.strip() in lines[1] and lines[2].startswith("hv2")
    assert lines[3] == "leader: c1 " + "x" * 5000
