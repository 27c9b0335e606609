"""Errors that the command line reports as one line and a non-zero exit, never a traceback."""


class JsnSynthError(Exception):
    """Base class of every error caused by the user's input or environment, not by a bug."""


class InputError(JsnSynthError):
    """An input file, folder, array or option is missing, unreadable or malformed."""


class OutputError(JsnSynthError):
    """An output location cannot be used (for example a folder that holds something else)."""
