import pytest

from bench.lost_writes import Workload, guest_name, parse_args


def test_defaults_measure_two_workloads_of_twenty_moves_under_a_cap():
    args = parse_args([])
    assert (args.moves, args.dirty, args.memory, args.bandwidth) == (20, [64, 16], 256, 32)
    assert args.dir.is_absolute()


@pytest.mark.parametrize("argv", [["--dirty", "64,x"], ["--moves", "0"], ["--dirty", "0"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        parse_args(argv)
    assert caught.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_each_replacement_guest_gets_a_new_name():
    assert [guest_name(64, n) for n in (1, 2)] == ["busy64-1", "busy64-2"]
    assert Workload(16).guests == 1
