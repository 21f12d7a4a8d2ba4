"""Writing report files: temp file in the target folder + fsync + rename, as results.py does for tables."""

from __future__ import annotations

import os
import tempfile

from ..errors import OctbatchError

__all__ = ["write_text_atomic"]


def write_text_atomic(path: str, text: str) -> None:
    """temp file in the target folder + fsync + rename: a reader sees the old file or the new one."""
    from ..results import fsync_dir

    folder = os.path.dirname(os.path.abspath(path)) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=folder)
    except OSError as exc:
        raise OctbatchError(
            f"cannot write {path}: {exc.strerror or exc}", "Check that the folder exists and is writable."
        ) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a report is as readable as any file the user writes
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise OctbatchError(
                f"cannot write {path}: {exc.strerror or exc}", "Check the folder's permissions and free space."
            ) from None
        raise
