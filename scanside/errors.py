"""The exceptions users catch. Library code raises them; only cli.py maps them to exit codes.

Every message names the input (file or argument), the value found, what was expected and the
fix, and never contains patient identifiers.
"""

from __future__ import annotations


class ScansideError(Exception):
    """Base class of every error scanside raises on purpose."""

    exit_code = 1


class InputError(ScansideError, ValueError):
    """Bad user input: an argument, an image, a file. The CLI exits with code 2."""

    exit_code = 2


class EngineError(InputError):
    """A missing, foreign or stale engine directory; the message says how to rebuild it."""


class BackendUnavailable(ScansideError):
    """The requested backend (CUDA, TensorRT) is not installed or has no device here."""

    exit_code = 2


class OutputError(ScansideError):
    """The output cannot be written (disk full, read-only, permissions): the batch stops, what
    was finished is kept, and a rerun resumes after it. The CLI exits with code 3."""

    exit_code = 3
