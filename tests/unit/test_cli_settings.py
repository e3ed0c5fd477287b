"""Where `ferry` finds its connection: /etc/ferry/ferry.toml, then the user's file,
then FERRY_* variables, then flags, each overriding the one before (cli/settings.py)."""

from pathlib import Path

import pytest

from ferry.cli.main import _flags, build_parser, client_settings
from ferry.cli.settings import (
    ENVIRONMENT,
    FLAGS,
    ClientLayer,
    ConfigFile,
    Merged,
    Source,
    anchored,
    config_files,
    env_layer,
    load,
    merge,
    read_layer,
    resolve,
    setting_name,
)
from ferry.proto.errors import FerryError

A, B, C = "nats://a:4222", "nats://b:4222", "nats://c:4222"


@pytest.mark.parametrize(
    ("environ", "named", "files"),
    [
        ({}, None, [ConfigFile("/etc/ferry/ferry.toml", False), ConfigFile("/home/al/.config/ferry/ferry.toml", False)]),
        ({"XDG_CONFIG_HOME": "/x"}, None, [ConfigFile("/etc/ferry/ferry.toml", False), ConfigFile("/x/ferry/ferry.toml", False)]),
        ({"XDG_CONFIG_HOME": ""}, None, [ConfigFile("/etc/ferry/ferry.toml", False), ConfigFile("/home/al/.config/ferry/ferry.toml", False)]),
        ({"FERRY_CONFIG": "/f.toml"}, None, [ConfigFile("/f.toml", True)]),
        ({"FERRY_CONFIG": "/f.toml"}, "/g.toml", [ConfigFile("/g.toml", True)]),
        ({}, "g.toml", [ConfigFile("g.toml", True)]),
    ],
)
def test_which_config_files_are_read(environ, named, files):
    assert config_files(environ, "/home/al", named) == files


@pytest.mark.parametrize(
    ("environ", "layer"),
    [
        ({}, ClientLayer()),
        ({"FERRY_NATS_URL": f"{A}, {B},"}, ClientLayer(servers=[A, B])),
        ({"FERRY_IDENTITY": "/id", "FERRY_NATS_TLS_CA": "/ca"}, ClientLayer(identity="/id", tls_ca="/ca")),
        ({"FERRY_IDENTITY": ""}, ClientLayer()),  # empty is unset, as shells export it
        ({"FERRY_TIMEOUT": "2.5", "FERRY_VIA": "c2"}, ClientLayer(timeout=2.5, via="c2")),
        ({"HOME": "/h", "FERRY_UNRELATED": "x"}, ClientLayer()),
    ],
)
def test_the_environment_layer(environ, layer):
    assert env_layer(environ) == layer


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf", "nan"])
def test_a_bad_timeout_in_the_environment_is_a_bad_request(value):
    with pytest.raises(FerryError) as refused:
        env_layer({"FERRY_TIMEOUT": value})
    assert refused.value.code == "bad_request"
    assert refused.value.message == f"$FERRY_TIMEOUT: {value!r} is not a number of seconds above 0"


@pytest.mark.parametrize(
    ("sources", "merged"),
    [
        ([], Merged(ClientLayer())),
        (
            [Source("/etc/ferry/ferry.toml", ClientLayer(servers=[A], timeout=3.0)), Source(ENVIRONMENT, ClientLayer(servers=[B]))],
            Merged(ClientLayer(servers=[B], timeout=3.0),
                   {"servers": "$FERRY_NATS_URL", "timeout": "/etc/ferry/ferry.toml: timeout"}),
        ),
        (
            [Source("/sys.toml", ClientLayer(identity="/sys")), Source("/user.toml", ClientLayer(identity="/user")),
             Source(ENVIRONMENT, ClientLayer()), Source(FLAGS, ClientLayer(via="c1"))],
            Merged(ClientLayer(identity="/user", via="c1"), {"identity": "/user.toml: identity", "via": "--via"}),
        ),
        # An empty value set on purpose (a flag `--identity ""`) still overrides.
        (
            [Source(ENVIRONMENT, ClientLayer(identity="/id")), Source(FLAGS, ClientLayer(identity=""))],
            Merged(ClientLayer(identity=""), {"identity": "--identity"}),
        ),
    ],
)
def test_later_layers_override_earlier_ones_key_by_key(sources, merged):
    assert merge(sources) == merged


@pytest.mark.parametrize(
    ("origin", "key", "name"),
    [
        (FLAGS, "servers", "--server"),
        (FLAGS, "tls_ca", "--tls-ca"),
        (ENVIRONMENT, "servers", "$FERRY_NATS_URL"),
        (ENVIRONMENT, "creds", "$FERRY_NATS_CREDS"),
        (ENVIRONMENT, "via", "$FERRY_VIA"),
        ("/etc/ferry/ferry.toml", "identity", "/etc/ferry/ferry.toml: identity"),
    ],
)
def test_a_setting_is_named_as_its_source_calls_it(origin, key, name):
    assert setting_name(origin, key) == name


def test_resolve_fills_the_defaults():
    settings = resolve(Merged(ClientLayer()))
    assert settings.nats.servers == ["nats://127.0.0.1:4222"] and settings.nats.request_timeout == 5.0
    assert settings.via == "" and settings.nats.identity == ""
    settings = resolve(Merged(ClientLayer(servers=[f"{A},{B}"], timeout=1.5, via="c1")))
    assert settings.nats.servers == [A, B] and settings.nats.request_timeout == 1.5 and settings.via == "c1"


@pytest.mark.parametrize(
    ("sources", "problem"),
    [
        ([Source(FLAGS, ClientLayer(servers=[]))], "--server is empty"),
        ([Source(ENVIRONMENT, ClientLayer(tls_ca="/nowhere/ca.pem"))], "$FERRY_NATS_TLS_CA: the file /nowhere/ca.pem does not exist"),
        ([Source("/f.toml", ClientLayer(identity="/nowhere/id"))], "/f.toml: identity: the file /nowhere/id does not exist"),
        ([Source(FLAGS, ClientLayer(creds="/nowhere/x.creds"))], "--creds: the file /nowhere/x.creds does not exist"),
    ],
)
def test_settings_that_cannot_work_are_a_bad_request_naming_where_they_came_from(sources, problem):
    with pytest.raises(FerryError) as refused:
        resolve(merge(sources))
    assert refused.value.code == "bad_request" and refused.value.message == problem


@pytest.mark.parametrize(
    ("layer", "anchored_layer"),
    [
        (ClientLayer(tls_ca="ca.pem", identity="/abs/id"), ClientLayer(tls_ca="/etc/ferry/ca.pem", identity="/abs/id")),
        (ClientLayer(creds="sub/x.creds", servers=["a"]), ClientLayer(creds="/etc/ferry/sub/x.creds", servers=["a"])),
        (ClientLayer(tls_key=""), ClientLayer(tls_key="")),
    ],
)
def test_paths_in_a_file_are_relative_to_its_folder(layer, anchored_layer):
    assert anchored(layer, "/etc/ferry") == anchored_layer


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_config_file_is_read_strictly(tmp_path):
    good = write(tmp_path / "ferry.toml", f'servers = ["{A}"]\ntimeout = 2\nvia = "c1"\ntls_ca = "ca.pem"\n')
    assert read_layer(str(good)) == ClientLayer(servers=[A], timeout=2.0, via="c1", tls_ca=str(tmp_path / "ca.pem"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('server = "nats://a"\n', "unknown key server (did you mean servers?)"),
        ("timeout = 0\n", "Expected `float` > 0.0 - at `$.timeout`"),
        ('servers = "nats://a"\n', "Expected `array`, got `str` - at `$.servers`"),
        ("servers = [\n", "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_a_bad_request_naming_the_file(tmp_path, text, problem):
    bad = write(tmp_path / "ferry.toml", text)
    with pytest.raises(FerryError) as refused:
        read_layer(str(bad))
    assert refused.value.code == "bad_request"
    assert refused.value.message.startswith(f"{bad}: {problem}")


def test_load_reads_system_then_user_file_then_environment_then_flags(tmp_path, monkeypatch):
    system = write(tmp_path / "etc" / "ferry.toml", f'servers = ["{A}"]\ntimeout = 9\nvia = "sys"\n')
    monkeypatch.setattr("ferry.cli.settings.SYSTEM_FILE", system)
    write(tmp_path / "xdg" / "ferry" / "ferry.toml", f'servers = ["{B}"]\n')
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "FERRY_VIA": "env"}

    settings = load(ClientLayer(), environ, str(tmp_path))
    assert (settings.nats.servers, settings.nats.request_timeout, settings.via) == ([B], 9.0, "env")
    settings = load(ClientLayer(servers=[C], via="flag"), environ, str(tmp_path))
    assert (settings.nats.servers, settings.via) == ([C], "flag")
    # A named file replaces both default files.
    named = write(tmp_path / "other.toml", "timeout = 1\n")
    settings = load(ClientLayer(), {**environ, "FERRY_CONFIG": str(named)}, str(tmp_path))
    assert (settings.nats.servers, settings.nats.request_timeout, settings.via) == (["nats://127.0.0.1:4222"], 1.0, "env")


def test_missing_default_files_are_skipped_but_a_named_one_must_exist(tmp_path, monkeypatch):
    monkeypatch.setattr("ferry.cli.settings.SYSTEM_FILE", tmp_path / "no-etc.toml")
    assert load(ClientLayer(), {}, str(tmp_path)).nats.servers == ["nats://127.0.0.1:4222"]
    with pytest.raises(FerryError) as refused:
        load(ClientLayer(), {}, str(tmp_path), named=str(tmp_path / "gone.toml"))
    assert refused.value.message == f"{tmp_path / 'gone.toml'}: cannot read it: No such file or directory"


@pytest.mark.parametrize(
    ("argv", "layer"),
    [
        (["hosts"], ClientLayer()),
        (["--server", f"{A},{B}", "--server", C, "hosts"], ClientLayer(servers=[A, B, C])),
        (["--timeout", "2", "--via", "c1", "--identity", "", "hosts"], ClientLayer(timeout=2.0, via="c1", identity="")),
    ],
)
def test_only_the_flags_given_make_the_flag_layer(argv, layer):
    assert _flags(build_parser().parse_args(argv)) == layer


def test_the_command_line_reads_the_named_config_file(tmp_path):
    named = write(tmp_path / "ferry.toml", f'servers = ["{A}"]\nvia = "c1"\n')
    settings = client_settings(build_parser().parse_args(["--config", str(named), "--via", "c2", "hosts"]), {})
    assert settings.nats.servers == [A] and settings.via == "c2"


def test_the_readme_example_is_a_valid_config_file(tmp_path):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = readme.split("# ~/.config/ferry/ferry.toml\n", 1)[1].split("```", 1)[0]
    layer = read_layer(str(write(tmp_path / "ferry.toml", example)))
    assert layer.timeout == 10.0 and len(layer.servers) == 3 and layer.identity.endswith("/.ferry/alice.identity")
