"""skyprep's one error family: every error it raises on purpose derives from ``SkyprepError``."""

from __future__ import annotations

import os
import signal


class SkyprepError(Exception):
    """An error skyprep reports as its message alone (no traceback): bad input, usage, a locked store."""


class InputError(SkyprepError):
    """An input that cannot be used, with the file (or folder) and the reason."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UsageError(SkyprepError):
    """A command that cannot be carried out as given (exit status 2)."""


class Interrupted(BaseException):
    """The run was asked to stop (SIGINT or SIGTERM): a ``BaseException``, like ``KeyboardInterrupt``,
    so no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}")
