"""The command line as a whole: help, version, and one-line errors for bad input."""

from __future__ import annotations

import warnings

import click
import pytest

from jsnsynth import __version__
from jsnsynth.cli import _interrupted, cli, main


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


@pytest.mark.parametrize("args, names", [
    (["phantom"], ["Missing option '--n'", "jsnsynth phantom --help"]),
    (["phantom", "--n", "1", "--out", "x", "--seed", "x"], ["'--seed'", "jsnsynth phantom --help"]),
    (["dataset", "--bogus"], ["No such option '--bogus'", "jsnsynth dataset --help"]),
    (["quantify", "a.png"], ["Missing argument 'FOLLOWUP'", "jsnsynth quantify --help"]),
    (["no-such-command"], ["No such command 'no-such-command'", "jsnsynth --help"]),
    (["phantom", "--n"], ["'--n' requires an argument", "jsnsynth phantom --help"]),  # no context yet
    (["lsn", "train", "--config"], ["'--config' requires an argument", "jsnsynth lsn train --help"]),
    # a misspelt choice of a free-text option, or one option without its partner, as any other
    # usage error (they were exit 1, without the pointer to the help)
    (["dataset", "--source", "phantoms", "--pairs", "2", "--out", "x"],
     ["--source 'phantoms': give phantom, fingerjoints:DIR or lsn:DIR", "jsnsynth dataset --help"]),
    (["dataset", "--source", "lsn:", "--pairs", "2", "--out", "x"], ["'lsn' needs a folder: lsn:DIR"]),
    (["validate", "ds", "--method", "regster"], ["'regster' is none of register, poc, ecc and not module:function",
                                                 "jsnsynth validate --help"]),
    (["validate-real", "dir", "--method", "mine:"], ["'mine:' is none of", "jsnsynth validate-real --help"]),
    (["publish", "ds", "--repo-id", "name"], ["'name' is not OWNER/NAME"]),
    (["quantify", "a.png", "b.png", "--upper-mask", "u.png", "--lower-mask", "l.png", "--followup-lower-mask", "f.png"],
     ["--followup-upper-mask and --followup-lower-mask go together", "jsnsynth quantify --help"]),
])
def test_usage_errors_are_one_line(args: list[str], names: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # click's own form is a four-line block; every other error of the command line is one line
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jsnsynth: error: ") and not captured.out
    assert all(name in lines[0] for name in names)


@pytest.mark.parametrize("option", [["--pairs", "0"], ["--seed", "-1"], ["--num-proc", "0"], ["--shard-size", "0"],
                                    ["--layers-every", "-1"], ["--flexion-deg", "31"], ["--magnification", "0.4", "1"],
                                    ["--soft-tissue-blend-mm", "0"], ["--split", "1.2", "0", "0"],
                                    ["--flexion-deg", "nan"], ["--photons-per-px", "inf", "inf"], ["--split", "nan", "0", "1"]])
def test_dataset_options_out_of_range_are_usage_errors(option: list[str], tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """They were checked by the library only: exit 1, where every other option's range gives 2."""
    args = ["dataset", "--source", "phantom", "--pairs", "2", "--out", str(tmp_path / "ds"), *option]
    assert main(args) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"'{option[0]}'" in lines[0] and "jsnsynth dataset --help" in lines[0]
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("args, name", [
    (["separate", "crop.png", "--out", ""], "--out"),
    (["dataset", "--source", "phantom", "--pairs", "2", "--out", ""], "--out"),
    (["quantify", "b.png", "f.png", "--upper-mask", "u.png", "--lower-mask", "l.png", "--json", ""], "--json"),
    (["validate", " "], "DATASET"),
    (["phantom", "--out", ""], "--out"),
])
def test_an_empty_path_is_a_usage_error(args: list[str], name: str, tmp_path, monkeypatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``Path("")`` is the current folder: ``separate x.png --out "$UNSET"`` wrote its files there."""
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"'{name}'" in lines[0] and "an empty path" in lines[0], lines
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args", [[], ["lsn"]])
def test_bare_command_shows_the_help(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert shown.startswith("Usage: jsnsynth") and "Commands:" in shown and len(shown.splitlines()) > 5
    assert "jsnsynth: error" not in shown


def _option(command: click.Command, name: str) -> click.Parameter:
    return next(p for p in command.params if p.name == name)


def test_help_ranges_are_the_library_checks() -> None:
    """--help said phantom --size >= 16 while the phantom needs 64, and each command took its own
    range of pixel spacings (phantom: any positive, quantify: unchecked, separate: 0.02-1)."""
    from jsnsynth.synth.layers import PIXEL_SPACING_RANGE_MM
    from jsnsynth.synth.limits import MAX_SIDE_PX
    from jsnsynth.synth.phantom import MIN_SIZE_PX

    for command in ("phantom", "dataset"):
        kind = _option(cli.commands[command], "size_px").type
        assert (kind.min, kind.max) == (MIN_SIZE_PX, MAX_SIDE_PX), command
    for command, name in (("phantom", "pixel_spacing_mm"), ("quantify", "pixel_spacing"),
                          ("separate", "pixel_spacing_mm")):
        kind = _option(cli.commands[command], name).type
        assert (kind.min, kind.max) == PIXEL_SPACING_RANGE_MM, command
    from jsnsynth.synth.pairs import PAIR_OPTION_LIMITS

    for name, limits in PAIR_OPTION_LIMITS.items():
        kind = _option(cli.commands["dataset"], name).type
        assert (kind.min, kind.max) == limits, name
    from jsnsynth.quantify.quantifier import MIN_LONG_SIDE_PX, MIN_SIDE_PX

    assert f"{MIN_LONG_SIDE_PX} px on the longer side" in cli.commands["quantify"].help
    assert f"at least {MIN_SIDE_PX}x{MIN_SIDE_PX} px" in cli.commands["quantify"].help
    assert f"at least {MIN_SIDE_PX}x{MIN_SIDE_PX} px" in cli.commands["separate"].help
    for command in ("quantify", "separate"):
        assert f"at most {MAX_SIDE_PX} px a side" in " ".join(cli.commands[command].help.split()), command


def test_help_states_no_range_where_there_is_none(capsys: pytest.CaptureFixture[str]) -> None:
    """--joint-center and --joint-axis-deg (finite, unbounded) showed '[x<=None]'."""
    assert main(["quantify", "--help"]) == 0
    assert "None" not in capsys.readouterr().out


def test_error_line_is_one_printable_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file name with a newline or control bytes must not break the one-line error."""
    assert main(["validate", str(tmp_path / "a\nb\x1b[31m")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jsnsynth: error:") and len(err.splitlines()) == 1 and err.rstrip("\n").isprintable()
    assert err.rstrip().endswith("a?b?[31m: no such dataset folder")  # the reason is kept


def test_ctrl_c_says_how_to_go_on_where_a_command_can_resume():
    resume = "jsnsynth: interrupted; rerun the same command to resume"
    for args in (["dataset", "--out", "ds"], ["phantom", "--n", "3"], ["validate", "ds", "--out", "rep"], ["validate", "ds", "--out=rep"],
                 ["lsn", "train", "--config", "c.json"], ["--version", "demo"], ["validate-real", "folder", "--out", "real"],
                 ["separate", "a.png", "--out", "layers"], ["quantify-batch", "pairs.csv", "--out", "results.csv"]):
        assert _interrupted(args) == resume, args
    for args in (["validate", "ds"], ["validate-real", "folder"], ["quantify", "b.png", "f.png"]):
        assert _interrupted(args) == "jsnsynth: interrupted", args


def test_demo_into_a_file_is_one_line_before_any_step(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("mine")
    assert main(["demo", "--out", str(target)]) == 1
    captured = capsys.readouterr()
    assert "[1/4]" not in captured.out and captured.err.strip() == f"jsnsynth: error: {target}: exists and is not a folder"


def test_demo_into_a_folder_of_other_files_is_refused_before_any_step(tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "dataset").mkdir(parents=True)
    (folder / "dataset" / "notes.txt").write_text("mine")
    (folder / "report.docx").write_text("mine")
    assert main(["demo", "--out", str(folder)]) == 1
    captured = capsys.readouterr()
    assert "[1/4]" not in captured.out
    assert captured.err.strip() == (f"jsnsynth: error: {folder}: holds files the demo does not write (report.docx); "
                                    "give the demo a folder of its own")
    assert sorted(p.name for p in folder.iterdir()) == ["dataset", "report.docx"]
    # hidden files are no one's work: a desktop's, or a part file of a killed demo
    (folder / "report.docx").unlink()
    (folder / "dataset" / "notes.txt").unlink()
    (folder / ".DS_Store").write_text("")
    (folder / ".phantoms_panel.png.x1y2.part").write_bytes(b"\x89PNG")
    # the fewest pairs it takes give every split a joint: it warned about its own settings at 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["demo", "--out", str(folder), "--pairs", "6"]) == 0
    assert main(["demo", "--out", str(folder), "--pairs", "5"]) == 2


def test_demo_into_a_dataset_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "ds"
    assert main(["dataset", "--source", "phantom", "--pairs", "2", "--size", "64", "--out", str(folder), "--quiet",
                 "--layers-every", "0"]) == 0
    before = sorted(p.name for p in folder.iterdir())
    # written without layers: the hint names no "layers" config to load
    assert '"layers"' not in capsys.readouterr().out
    assert main(["demo", "--out", str(folder)]) == 1
    assert capsys.readouterr().err.strip() == f"jsnsynth: error: {folder}: holds a jsnsynth dataset; give the demo a folder of its own"
    assert sorted(p.name for p in folder.iterdir()) == before
