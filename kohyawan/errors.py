"""Errors that reach the user as one line and an exit code.

Exit codes (see docs/architecture.md, "Errors and exit codes"): 0 success, 1 the work failed, 2 bad usage or
bad input, 130 interrupted.
Only ``cli`` turns these into output; library code raises them with a message a user can act on.
"""

from __future__ import annotations


class KohyawanError(Exception):
    """Base class: ``str(err)`` is a single line meant for the user."""

    exit_code = 1

    def __init__(self, message: str):
        # A user-facing error is one line: fold anything multi-line a caller passed in.
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)


class WorkFailed(KohyawanError):
    """The work was attempted and failed (a run that ended failed, a check that failed)."""

    exit_code = 1


class BadInput(KohyawanError):
    """Bad usage or bad input: nothing was done."""

    exit_code = 2


class ConfigError(BadInput):
    """An unknown key, a wrong type, an impossible combination of settings."""


class ModelFileError(BadInput):
    """A model file that is missing, unreadable or the wrong kind for the task."""


class DatasetError(BadInput):
    """A dataset that is missing or cannot be used."""


class ToolMissing(BadInput):
    """An external program (ffmpeg, the trainer) that is needed and not found."""


class Busy(BadInput):
    """What was asked for is held by another process (a run another kohyawan supervises): bad usage, exit 2;
    the web UI answers 409."""


class Interrupted(KohyawanError):
    exit_code = 130
