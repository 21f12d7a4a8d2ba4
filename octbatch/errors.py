"""The two kinds of failure: user errors (no traceback) and everything else (a bug)."""

from __future__ import annotations

import enum

__all__ = ["OctbatchError", "ExitCode"]


class ExitCode(enum.IntEnum):
    """Documented process exit codes of the ``octbatch`` command."""

    OK = 0
    USER_ERROR = 1  # OctbatchError: bad arguments, missing archive, invalid model, ...
    USAGE = 2  # Click usage error
    UNREADABLE_FILES = 3  # the run finished, every file has a row, some rows are status=error
    FAILED_SHARDS = 4  # the run finished but some shards failed after all retries (no rows for them)
    INTERRUPTED = 130  # Ctrl-C; committed shards are kept, rerun to resume


class OctbatchError(Exception):
    """A problem the user can fix. Printed as ``Error: <what>. <how to fix>``, exit 1, no traceback."""

    def __init__(self, what: str, fix: str | None = None):
        self.what = what.rstrip(".")
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.what}. {self.fix}" if self.fix else f"{self.what}."
