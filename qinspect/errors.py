"""One exception family for everything qinspect reports to a user.

Every user-facing error carries a message that fits on one line and says what to do
next. The CLI prints ``str(error)`` to stderr and exits with ``error.exit_code``.
"""

from __future__ import annotations


class QInspectError(Exception):
    """Base class: a problem the user can act on (exit code 2)."""

    exit_code = 2


class LoadError(QInspectError):
    """The file could not be read as a checkpoint (missing, corrupt, truncated...)."""


class UnsafeCheckpointError(LoadError):
    """The file needs code execution to load, and qinspect refuses to run it."""


class UnsupportedFormatError(LoadError):
    """The file is readable, but its layout is not one qinspect understands."""


class InputError(QInspectError):
    """A user-supplied input (sample array, config, option) is unusable."""


class VerifyError(QInspectError):
    """A layer could not be re-run for verification."""
