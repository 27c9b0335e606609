"""The command line as a whole: help, version, and one-line errors for bad input."""

from __future__ import annotations

import click
import pytest

from jsnsynth import __version__
from jsnsynth.cli import cli, main


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append(prefix + (name,))
        if isinstance(command, click.Group):
            found.extend(_all_commands(command, prefix + (name,)))
    return found


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for (name,) in [c[:1] for c in _all_commands(cli)]:
        assert name in out


@pytest.mark.parametrize("command", _all_commands(cli), ids=lambda c: " ".join(c))
def test_every_command_has_help_with_a_description(command: tuple[str, ...], capsys) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: jsnsynth " + " ".join(command))
    assert len(out.splitlines()) > 3


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err
