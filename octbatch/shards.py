"""Deterministic shards, the work folder's journal, and the lock that keeps two runs apart.

Work folder `<out>.parts/` holds:
  run.json                 the settings (model sha256, classes, preprocessing) every part was made with
  part-<shard id>.parquet  one per committed shard (written to a temp name, then renamed: a part
                           exists whole or not at all, so the part files themselves are the journal)
  slice-<i>-of-<N>.json    written when `--shard i/N` finished its slice
A shard's id is a hash of the (path, size, mtime) of its files, so the same pending work always
yields the same ids, and nothing depends on which shard finishes first.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .archive import FileEntry
from .errors import OctbatchError

__all__ = [
    "Shard",
    "make_shards",
    "in_slice",
    "parse_slice",
    "WorkDir",
    "RunLock",
    "entry_key",
]


def entry_key(path: str, size: int, mtime_us: int) -> int:
    """Identity of one version of one file, as held in memory for the committed/discovered sets."""
    return hash((path, int(size), int(mtime_us)))


@dataclass
class Shard:
    id: str
    entries: list[FileEntry]

    def __len__(self) -> int:
        return len(self.entries)


def shard_id(entries: list[FileEntry]) -> str:
    h = hashlib.blake2b(digest_size=10)
    for e in entries:
        h.update(e.path.encode("utf-8", "surrogateescape"))
        h.update(b"\0%d\0%d\n" % (e.size, e.mtime_ns // 1000))
    return h.hexdigest()


def make_shards(entries: Iterable[FileEntry], size: int) -> Iterator[Shard]:
    buf: list[FileEntry] = []
    for e in entries:
        buf.append(e)
        if len(buf) >= size:
            yield Shard(shard_id(buf), buf)
            buf = []
    if buf:
        yield Shard(shard_id(buf), buf)


def parse_slice(text: str | None) -> tuple[int, int] | None:
    """'i/N' -> (i, N) with 0 <= i < N."""
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise OctbatchError(
            f"--shard {text!r} is not i/N", "Use e.g. --shard 0/4 (slices are numbered from 0)."
        ) from None
    if n < 1 or not 0 <= i < n:
        raise OctbatchError(
            f"--shard {text}: need 0 <= i < N", "Slices are numbered 0..N-1, e.g. --shard 3/4 is the last of four."
        )
    return i, n


def in_slice(path: str, sl: tuple[int, int] | None) -> bool:
    """Stable slice membership by path hash: a file keeps its slice as the archive grows."""
    if sl is None:
        return True
    return zlib.crc32(path.encode("utf-8", "surrogateescape")) % sl[1] == sl[0]


class WorkDir:
    def __init__(self, out: str):
        self.out = os.path.abspath(out)
        self.path = self.out + ".parts"
        self.run_json = os.path.join(self.path, "run.json")

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def create(self) -> None:
        os.makedirs(self.path, exist_ok=True)

    def parts(self) -> list[str]:
        if not self.exists():
            return []
        return sorted(
            os.path.join(self.path, n)
            for n in os.listdir(self.path)
            if n.startswith("part-") and n.endswith(".parquet")
        )

    def read_settings(self) -> dict | None:
        try:
            with open(self.run_json) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a torn run.json (crash while writing) is rewritten

    def write_settings(self, settings: dict) -> None:
        self.create()
        tmp = self.run_json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(settings, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.run_json)

    def slice_marker(self, i: int, n: int) -> str:
        return os.path.join(self.path, f"slice-{i}-of-{n}.json")

    def slices_done(self) -> dict[tuple[int, int], dict]:
        done = {}
        if not self.exists():
            return done
        for name in os.listdir(self.path):
            if name.startswith("slice-") and name.endswith(".json"):
                try:
                    i, _, n = name[len("slice-") : -len(".json")].split("-")
                    with open(os.path.join(self.path, name)) as f:
                        done[(int(i), int(n))] = json.load(f)
                except (ValueError, OSError):
                    continue
        return done

    def clear_slice_markers(self) -> None:
        for i, n in self.slices_done():
            try:
                os.unlink(self.slice_marker(i, n))
            except OSError:
                pass

    def clean_temps(self) -> None:
        """Remove temp files left by a killed run (they are never part of the result)."""
        folders = [self.path, os.path.dirname(self.out)]
        base = os.path.basename(self.out)
        for folder in folders:
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                if (folder == self.path and ".tmp-" in name) or name.startswith(f".{base}.tmp-"):
                    try:
                        os.unlink(os.path.join(folder, name))
                    except OSError:
                        pass

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)


class RunLock:
    """An flock on `<out>.lock`: released by the kernel when the process dies, so a crash never
    leaves a stale lock. Full runs and merges lock exclusively; `--shard` slices share it (so
    concurrent slices of one job coexist) and lock their own slice exclusively."""

    def __init__(self, out: str, *, shared: bool = False, slice_: tuple[int, int] | None = None):
        self.out = os.path.abspath(out)
        self.shared = shared
        self.slice = slice_
        self._fds: list[int] = []

    def _take(self, path: str, mode: int, what: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            except OSError:
                pass
            os.close(fd)
            raise OctbatchError(
                f"another octbatch run is writing {what}" + (f" ({holder})" if holder else ""),
                "Wait for it to finish, or give a different --out. The lock is released when that process exits.",
            ) from None
        if mode == fcntl.LOCK_EX:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
        self._fds.append(fd)

    def __enter__(self) -> RunLock:
        try:
            self._take(self.out + ".lock", fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX, self.out)
            if self.slice is not None:
                wd = WorkDir(self.out)
                wd.create()
                i, n = self.slice
                self._take(
                    os.path.join(wd.path, f".slice-{i}-of-{n}.lock"), fcntl.LOCK_EX, f"slice {i}/{n} of {self.out}"
                )
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for fd in reversed(self._fds):
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self._fds.clear()
