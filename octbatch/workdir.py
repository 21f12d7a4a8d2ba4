"""The work folder `<out>.parts/` (its journal), the lock that keeps two runs apart, and the checks
that a run adds to a folder or table only what was made with the same settings.

The folder holds:
  run.json                 the settings (model sha256, classes, preprocessing) every part was made with
  part-<shard id>.parquet  one per committed shard (written to a temp name, then renamed: a part
                           exists whole or not at all, so the part files themselves are the journal)
  slice-<i>-of-<N>.json    written when `--slice i/N` finished its slice
"""

from __future__ import annotations

import fcntl
import json
import os

from .errors import OctbatchError
from .results import read_metadata

__all__ = ["WorkDir", "RunLock", "check_same", "check_previous_table", "check_phi"]


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

    def write_slice_marker(self, i: int, n: int, marker: dict, tmp_suffix: str) -> None:
        """Record that slice i/N finished (temp file + rename: the marker exists whole or not at all)."""
        tmp = self.slice_marker(i, n) + ".tmp-" + tmp_suffix
        with open(tmp, "w") as f:
            json.dump(marker, f)
        os.replace(tmp, self.slice_marker(i, n))

    def slices_done(self) -> dict[tuple[int, int], dict]:
        done: dict[tuple[int, int], dict] = {}
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
    leaves a stale lock. Full runs and merges lock exclusively; `--slice` runs share it (so
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


def check_same(prev: dict, now: dict, out: str, *, what: str) -> None:
    ps, ns = prev.get("settings") or {}, now["settings"]
    diffs = [k for k in ("model_sha256", "classes", "preprocessing") if ps.get(k) != ns.get(k)]
    if diffs:
        raise OctbatchError(
            f"{what} was made with a different model or preprocessing ({', '.join(diffs)} differ)",
            "Pass --overwrite to start over with this model, or use another --out.",
        )
    if prev.get("gate") and now.get("gate") and prev["gate"] != now["gate"]:
        raise OctbatchError(
            f"{what} was made with other OCT gate settings ({prev['gate'].get('mode')} -> {now['gate'].get('mode')}, or another gate file or threshold)",
            "Rerun with the same --gate/--gate-model/--gate-threshold, pass --overwrite to start over, or use another --out.",
        )
    if prev.get("archive") and prev.get("archive") != now["archive"]:
        raise OctbatchError(
            f"{what} holds results for the archive {prev.get('archive')}, not {now['archive']}",
            "Use another --out for this archive, or --overwrite to replace the results.",
        )


def check_previous_table(out: str, state: dict) -> dict:
    """The metadata of the table a run adds to, checked against this run's settings."""
    try:
        md = read_metadata(out)
    except Exception:  # noqa: BLE001 - not Parquet at all
        md = {}
    if not md:
        raise OctbatchError(
            f"output {out} exists and is not an octbatch result",
            "Pass --overwrite to replace it, or choose another --out.",
        )
    previous = {
        "settings": {k: md.get(k) for k in ("model_sha256", "classes", "preprocessing")},
        "archive": md.get("archive_root"),
        "gate": md.get("gate"),
    }
    check_same(previous, state, out, what=out)
    return md


def check_phi(md: dict, pseudo, out: str) -> None:
    """Rows added to a table must pseudonymise patients as its existing rows do."""
    prev = md.get("phi")
    if not prev:
        return
    now = pseudo.metadata()
    if (prev.get("patient_id", "").startswith("kept")) != (now.get("patient_id", "").startswith("kept")) or prev.get(
        "key_fingerprint"
    ) != now.get("key_fingerprint"):
        raise OctbatchError(
            f"output {out} was written with other patient-ID settings (--phi / key fingerprint "
            f"{prev.get('key_fingerprint')} vs {now.get('key_fingerprint')})",
            "Use the same --phi and key as before, or --overwrite, or another --out.",
        )
