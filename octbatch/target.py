"""Where a run reads and writes: the archive (a folder or s3://) and the output (a file, or an s3://
--out locked and staged in a local folder), checked before any work starts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .config import RunConfig
from .errors import OctbatchError
from .objstore import configure as configure_storage
from .objstore import is_url
from .workdir import WorkDir

__all__ = ["Target", "locate", "check_paths", "check_out"]


@dataclass
class Target:
    """The archive and the output of a run."""

    archive: str  # absolute path or s3:// URL
    out: str  # the local output file (an s3:// --out is staged here)
    remote: Any = None  # objstore_out.RemoteOut for an s3:// --out
    lock: Any = None  # objstore_lock.S3Lock held on that --out

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def parts_dir(self) -> str:
        return self.remote.parts_url if self.remote else WorkDir(self.out).path


def locate(cfg: RunConfig) -> Target:
    """Where a run reads and writes; an s3:// --out is locked and staged in a local folder."""
    archive = cfg.archive.rstrip("/") if is_url(cfg.archive) else os.path.abspath(cfg.archive)
    configure_storage(dict(cfg.storage_options))
    if is_url(cfg.out):  # staged in a local folder; parts, commits, locks and the table in the bucket
        from .objstore_lock import S3Lock
        from .objstore_out import RemoteOut

        remote = RemoteOut(cfg.out, cfg.slice)
        lock = S3Lock(remote, cfg.slice)
        lock.acquire()  # before the stage: what it reads must not change under it
        try:
            out = remote.stage(cfg.overwrite)
            check_paths(archive, out)
        except BaseException:
            lock.release()
            raise
        return Target(archive, out, remote, lock)
    if "://" in cfg.out:
        raise OctbatchError(
            f"--out {cfg.out}: only s3:// URLs and file paths are supported", "Give s3://BUCKET/KEY.parquet or a path."
        )
    out = os.path.abspath(cfg.out)
    check_paths(archive, out)
    return Target(archive, out)


def check_paths(archive: str, out: str) -> None:
    if is_url(archive):
        check_out(out)  # the archive is checked by listing it
        return
    if not os.path.exists(archive):
        raise OctbatchError(f"archive {archive} does not exist", "Check the path you gave to octbatch run.")
    if not os.path.isdir(archive):
        raise OctbatchError(f"archive {archive} is not a directory", "Give the folder that holds the scans.")
    if not os.access(archive, os.R_OK | os.X_OK):
        raise OctbatchError(f"archive {archive} cannot be read (permission denied)", "Run as a user who can read it.")
    if os.path.isdir(out):
        raise OctbatchError(f"output {out} is a directory", "Give a file name, e.g. --out results.parquet.")
    real_archive = os.path.realpath(archive)
    real_out_dir = os.path.realpath(os.path.dirname(out))
    if real_out_dir == real_archive or real_out_dir.startswith(real_archive + os.sep):
        raise OctbatchError(
            f"output {out} is inside the archive {archive}",
            "Write results outside the archive (a later run would otherwise scan its own work files).",
        )
    check_out(out)


def check_out(out: str) -> None:
    if os.path.isdir(out):
        raise OctbatchError(f"output {out} is a directory", "Give a file name, e.g. --out results.parquet.")
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise OctbatchError(
            f"cannot create the output folder {parent}: {exc.strerror}", "Choose a writable --out location."
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OctbatchError(
            f"output folder {parent} is not writable", "Choose a writable --out location or fix its permissions."
        )
