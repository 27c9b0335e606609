"""Errors that the command line reports as one line and a non-zero exit, never a traceback."""

from __future__ import annotations

#: Longest text kept of a message that comes from elsewhere (a library, a plug-in, a file).
MESSAGE_LIMIT = 300


class JsnSynthError(Exception):
    """Base class of every error caused by the user's input or environment, not by a bug."""


class InputError(JsnSynthError):
    """An input file, folder, array or option is missing, unreadable or malformed."""


class OutputError(JsnSynthError):
    """An output location cannot be used (for example a folder that holds something else)."""


class WorkerError(JsnSynthError):
    """A worker process stopped abruptly (killed by the system, out of memory)."""


def one_line(text: str, limit: int | None = MESSAGE_LIMIT, whole: bool = False) -> str:
    """``text`` as one printable line: its first line (or, with ``whole``, all of it, line breaks
    included, as for a file name that holds one), control characters (raw bytes of a corrupt file
    that a library quoted) shown as ``?``, cut to ``limit`` characters.

    Args:
        text: any message.
        limit: most characters kept (an ellipsis marks a cut); None keeps them all.
        whole: keep every line, each line break shown as ``?``.
    """
    text = str(text)
    if not whole:
        lines = text.splitlines()
        text = lines[0] if lines else ""
    printable = "".join(c if c.isprintable() else "?" for c in text)
    return printable if limit is None or len(printable) <= limit else printable[: limit - 3] + "..."


def exception_line(exc: BaseException) -> str:
    """``ExcType: message`` of an exception as one printable line (:func:`one_line`), for
    reporting a failure that is not one of ours (a plug-in's, a third-party reader's)."""
    message = one_line(str(exc))
    return f"{exc.__class__.__name__}: {message}" if message else exc.__class__.__name__
