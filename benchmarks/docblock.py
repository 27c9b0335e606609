"""Where benchmarks write into docs/: tables between ``<!-- NAME:start/end -->`` markers, and
figures that may or may not be committed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def local_figures(docs: Path = DOCS) -> Path:
    """Where figures that show pixels of the real finger-joint crops go: ``docs/figures/local``,
    which git ignores. The crops come without a licence and must not enter the repository
    (DESIGN.md), not even as thumbnails in a figure; plots of numbers measured on them are
    committed as usual."""
    return docs / "figures" / "local"


def write_doc_block(doc: Path, name: str, block: str, title: str = "Benchmarks") -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``doc``.

    The markers are appended when absent, and ``doc`` is created (with ``title``) when missing,
    so rerunning a benchmark only ever rewrites its own block.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else f"# {title}\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{block}\n{end}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{start}\n{block}\n{end}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def command_line(script: str, options: Sequence[tuple[str, object, object]]) -> str:
    """The command that reproduces a benchmark run, in backticks: ``benchmarks/<script>`` with
    each ``(option, value, default)`` whose value is not its default (a list: its items)."""
    words = [".venv/bin/python", f"benchmarks/{script}"]
    for name, value, default in options:
        if value is None or value == default:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        words += [f"--{name}", *(f"{item:g}" if isinstance(item, float) else str(item) for item in items)]
    return "`" + " ".join(words) + "`"
