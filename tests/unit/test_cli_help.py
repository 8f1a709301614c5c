"""Every command's --help renders (help text is rich markup: a stray "[/x]" broke one)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from inferno.cli import app

COMMANDS = ["proxy", "backend", "serve", "governator", "keys", "usage", "models"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_renders(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output


def test_proxy_help_names_the_ops_health_choices() -> None:
    result = CliRunner().invoke(app, ["proxy", "--help"], env={"COLUMNS": "120"})
    assert "--ops-health" in result.output and "thread" in result.output
