"""The ``jsnsynth`` command line: thin wiring of synth, lsn and quantify.

Every command parses its options, calls one library function and prints where its outputs went.
Errors caused by input are reported as a single ``jsnsynth: error: ...`` line with exit code 1;
usage errors exit with 2 (click's convention); an interrupt exits with 130 and leaves only
complete files behind.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from jsnsynth import __version__
from jsnsynth.errors import JsnSynthError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", "-V", prog_name="jsnsynth")
def cli() -> None:
    """Finger-joint radiographs with exactly known joint space narrowing (JSN).

    \b
    Typical flow:
      jsnsynth phantom --n 8 --out phantoms/           physics phantoms with exact layers
      jsnsynth dataset --source phantom --pairs 100 --out ds/   labelled baseline/follow-up pairs
      jsnsynth quantify base.png follow.png --upper-mask u.png --lower-mask l.png
      jsnsynth validate ds/                            accuracy of a JSN method against truth

    Sign convention: JSN progression = dy_upper - dy_lower along the joint axis (upper -> lower
    bone) at the joint centre; positive means narrowing.
    """


# --- synth commands -------------------------------------------------------------------------

# --- quantify commands ----------------------------------------------------------------------

# --- lsn commands ---------------------------------------------------------------------------

# --- demo -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code (the console-script entry point)."""
    try:
        cli.main(args=argv, prog_name="jsnsynth", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("jsnsynth: interrupted; rerun the same command to resume", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except JsnSynthError as exc:
        click.echo(f"jsnsynth: error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("jsnsynth: interrupted; rerun the same command to resume", err=True)
        return 130
    except Exception as exc:  # a bug or an unforeseen input: still one line unless asked
        if os.environ.get("JSNSYNTH_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else ""
        click.echo(
            f"jsnsynth: error: {exc.__class__.__name__}: {message} (set JSNSYNTH_DEBUG=1 for a traceback)",
            err=True,
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
