"""Writing a benchmark's table into its docs page, between ``<!-- NAME:start/end -->`` markers."""

from __future__ import annotations

from pathlib import Path


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
