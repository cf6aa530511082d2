"""The project's error types and how they map to exit codes.

* :class:`UserInputError` — bad input or usage (a missing file, a wrong shape, an unknown
  config key). The CLI prints its one-line message and exits with code 2.
* :class:`StageFailed` — a stage could not finish (a block kept failing). Exit code 1.

Low-level failures (an OSError from a reader, a ValueError from numpy) are wrapped in these
where they enter, with the file, section, block or option at fault named in the message.
"""

from __future__ import annotations


class ConnectomeError(Exception):
    """Base class of the project's own errors."""

    exit_code = 1


class UserInputError(ConnectomeError):
    """Bad input or usage: exit code 2 with one clear line naming what is wrong."""

    exit_code = 2


class StageFailed(ConnectomeError):
    """A stage failed after retries; the message names the stage, block and cause."""

    exit_code = 1
