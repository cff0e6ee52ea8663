"""skyprep's one error family: every error it raises on purpose derives from ``SkyprepError``."""

from __future__ import annotations

import os


class SkyprepError(Exception):
    """An error skyprep reports as its message alone (no traceback): bad input, usage, a locked store."""


class InputError(SkyprepError):
    """An input that cannot be used, with the file (or folder) and the reason."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
