"""`ferry --server` takes one URL or several joined by commas, like $FERRY_NATS_URL
(the lab prints its three servers that way)."""

import pytest

from ferry.cli.main import _settings, build_parser

A, B, C = "nats://127.0.0.1:4231", "nats://127.0.0.1:4232", "nats://127.0.0.1:4233"


@pytest.mark.parametrize(
    ("flags", "servers"),
    [
        (["--server", A], [A]),
        (["--server", f"{A},{B},{C}"], [A, B, C]),
        (["--server", f"{A},{B}", "--server", C], [A, B, C]),
        (["--server", f"{A}, {B},"], [A, B]),
    ],
)
def test_each_server_flag_may_list_several_urls(flags: list[str], servers: list[str]) -> None:
    assert _settings(build_parser().parse_args([*flags, "hosts"])).servers == servers


def test_without_a_flag_the_environment_lists_the_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_NATS_URL", f"{A},{B}")
    assert _settings(build_parser().parse_args(["hosts"])).servers == [A, B]
