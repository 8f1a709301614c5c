from __future__ import annotations

from pathlib import Path

import pytest

from inferno.core.config import BackendSettings, ProxySettings
from inferno.core.errors import ConfigError
from inferno.core.settings import load_settings


@pytest.fixture
def yaml_file(tmp_path: Path) -> Path:
    path = tmp_path / "inferno.yaml"
    path.write_text("proxy:\n  port: 9000\n  backends: a:1,b:2\nbackend:\n  threads: 3\n")
    return path


def test_defaults_when_nothing_given() -> None:
    s = load_settings(ProxySettings)
    assert (s.host, s.port, s.ops_port) == ("127.0.0.1", 8080, 6100)


@pytest.mark.parametrize(
    ("env", "cli", "expected"),
    [
        pytest.param({}, {}, 9000, id="yaml-over-default"),
        pytest.param({"INFERNO_PROXY_PORT": "9100"}, {}, 9100, id="env-over-yaml"),
        pytest.param({"INFERNO_PROXY_PORT": "9100"}, {"port": 9200}, 9200, id="cli-over-env"),
        pytest.param({}, {"port": None}, 9000, id="cli-none-means-not-given"),
    ],
)
def test_precedence(yaml_file: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                    cli: dict[str, object], expected: int) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert load_settings(ProxySettings, cli=cli, config_file=yaml_file).port == expected


def test_comma_separated_backends_from_yaml_and_env(yaml_file: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(ProxySettings, config_file=yaml_file).backends == ["a:1", "b:2"]
    monkeypatch.setenv("INFERNO_PROXY_BACKENDS", "x:1, y:2")
    assert load_settings(ProxySettings, config_file=yaml_file).backends == ["x:1", "y:2"]


def test_sections_are_per_component(yaml_file: Path) -> None:
    assert load_settings(BackendSettings, config_file=yaml_file).threads == 3


@pytest.mark.parametrize(
    ("env", "cli", "yaml_text", "needle"),
    [
        pytest.param({"INFERNO_PROXY_PORT": "abc"}, {}, "", "'port' from environment variable "
                     "INFERNO_PROXY_PORT", id="env"),
        pytest.param({}, {"port": 70000}, "", "'port' from command line (--port)", id="cli"),
        pytest.param({}, {}, "proxy:\n  max_attempts: 0\n", "proxy.max_attempts", id="yaml"),
        pytest.param({}, {}, "proxy:\n  bogus: 1\n", "'bogus'", id="unknown-key"),
        pytest.param({}, {}, "proxy:\n  routing: fastest\n", "'routing'", id="bad-choice"),
    ],
)
def test_errors_name_field_and_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      env: dict[str, str], cli: dict[str, object],
                                      yaml_text: str, needle: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(ProxySettings, cli=cli, config_file=path)
    assert needle in info.value.message


@pytest.mark.parametrize("text", ["[1, 2]", "proxy: [1]", ": : :"], ids=["list", "section", "bad"])
def test_malformed_yaml_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_settings(ProxySettings, config_file=path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(ProxySettings, config_file=tmp_path / "nope.yaml")


def test_a_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERNO_BACKEND_THREADS", "0")
    with pytest.raises(ConfigError) as info:
        load_settings(BackendSettings)
    assert "'threads' from environment variable INFERNO_BACKEND_THREADS" in info.value.message


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        pytest.param("proxy:\n  queue_wait: -1\n", "proxy.queue_wait", id="scalar"),
        pytest.param(
            "proxy:\n  routing:\n    default_profile: p\n    profiles:\n"
            "      p:\n        scorers: [{ref: cost, weight: -2}]\n",
            "proxy.routing.profiles.p.scorers.0.weight",
            id="nested",
        ),
    ],
)
def test_a_bad_yaml_value_names_the_file_and_field(
    tmp_path: Path, yaml_text: str, field: str
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(ProxySettings, config_file=path)
    assert f"config file {path} ({field})" in info.value.message


def test_settings_errors_are_config_errors_not_value_errors() -> None:
    from inferno.store import normalise_url

    with pytest.raises(ConfigError, match="database_url"):
        normalise_url("mysql://user:secret@db/x")


def test_the_cli_prints_a_config_error_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from inferno.cli import main

    monkeypatch.setenv("INFERNO_PROXY_DATABASE_URL", "mysql://user:secret@db/x")
    monkeypatch.setattr("sys.argv", ["inferno", "keys", "list"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "'database_url'" in err and "secret" not in err
