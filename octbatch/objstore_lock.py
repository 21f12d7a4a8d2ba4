"""The lock of an s3:// --out: lock objects in the bucket keep two runs from writing one table.

A bucket has no flock, so a run holds a lock object, created with a conditional put (If-None-Match:
of two runs that start at once, exactly one creates it) and kept fresh by a heartbeat thread
(a conditional put on the lock's own ETag, so a run that lost its lock never takes it back):

  <out>.lock/run.json              a full run or an `octbatch merge`: alone on the table
  <out>.lock/slice-<i>-of-<N>.json a `--slice i/N` run: beside the other slices, never beside a run or merge

The second run fails with `Error: another octbatch run is writing ...` naming the holder. A lock
whose owner is dead is taken over, with a warning on stderr: at once when the owner ran on this
machine and its process is gone (a kill -9, then a rerun), else when its heartbeat is older than
OCTBATCH_S3_LOCK_STALE_S seconds (default 300; it must exceed the clock skew between machines). The
lock is deleted when the run ends, also when it fails.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from typing import Any

from .errors import OctbatchError

__all__ = ["S3Lock", "stale_after"]

DEFAULT_STALE_S = 300.0


def stale_after() -> float:
    """Seconds without a heartbeat after which a lock is stale ($OCTBATCH_S3_LOCK_STALE_S)."""
    text = os.environ.get("OCTBATCH_S3_LOCK_STALE_S", "")
    try:
        value = float(text) if text else DEFAULT_STALE_S
    except ValueError:
        raise OctbatchError(
            f"OCTBATCH_S3_LOCK_STALE_S={text!r} is not a number of seconds", "Set it to e.g. 300, or unset it."
        ) from None
    return max(value, 1.0)


def _warn(msg: str) -> None:
    print(f"octbatch: warning: {msg}", file=sys.stderr, flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class S3Lock:
    """`with S3Lock(remote, slice_):` holds the lock of remote's table (remote: objstore_out.RemoteOut)."""

    def __init__(self, remote: Any, slice_: tuple[int, int] | None = None):
        self.remote = remote
        self.prefix = remote.key + ".lock/"
        self.name = f"slice-{slice_[0]}-of-{slice_[1]}" if slice_ else "run"
        self.key = self.prefix + self.name + ".json"
        self.stale_s = stale_after()
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what a lock says ---------------------------------------------------------------------
    def _body(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "pid": os.getpid(),
                "host": os.uname().nodename,
                "started_at": self.started,
                "heartbeat_at": time.time(),
                "what": self.name,
            }
        ).encode()

    def _read(self, key: str) -> tuple[dict, str | None] | None:
        """(holder, its ETag) of a lock object; None when there is none."""
        import obstore
        import obstore.exceptions as oe

        def get():
            try:
                r = obstore.get(self.remote._store(), key)
            except (oe.NotFoundError, FileNotFoundError):
                return None
            return bytes(r.bytes()), r.meta.get("e_tag")

        got = self.remote._call("read", get)
        if got is None:
            return None
        try:
            holder = json.loads(got[0])
        except ValueError:
            holder = {}  # a torn or foreign object: judged by its age like a silent owner
        return (holder if isinstance(holder, dict) else {}), got[1]

    def _dead(self, holder: dict) -> str | None:
        """Why the holder is dead (None: it may be alive)."""
        age = time.time() - float(holder.get("heartbeat_at") or 0)
        pid, host = holder.get("pid"), holder.get("host")
        if host == os.uname().nodename and isinstance(pid, int) and not _pid_alive(pid):
            return f"its process {pid} on this machine is gone"
        if age > self.stale_s:
            return f"no heartbeat for {age:.0f} s (over OCTBATCH_S3_LOCK_STALE_S={self.stale_s:.0f})"
        return None

    def _busy(self, holder: dict) -> OctbatchError:
        who = f"pid {holder.get('pid')} on {holder.get('host')}, {holder.get('what', 'run')}"
        age = time.time() - float(holder.get("heartbeat_at") or 0)
        return OctbatchError(
            f"another octbatch run is writing {self.remote.url} ({who}, last heartbeat {age:.0f} s ago)",
            "Wait for it to finish, or give a different --out. A lock whose run died is taken over when its "
            f"heartbeat is older than {self.stale_s:.0f} s (OCTBATCH_S3_LOCK_STALE_S), at once from the same machine.",
        )

    # --- take, keep, give back ----------------------------------------------------------------
    def _create(self) -> bool:
        import obstore

        if not self.remote.put_if_absent(self.key, self._body()):
            return False
        head = self.remote._call("read", obstore.head, self.remote._store(), self.key)
        self._etag = head.get("e_tag")
        return True

    def _take_over_or_fail(self, key: str) -> None:
        """`key` is held: delete it when its holder is dead (with a warning), else refuse."""
        import obstore

        got = self._read(key)
        if got is None:
            return  # released meanwhile
        holder, _ = got
        why = self._dead(holder)
        if why is None:
            raise self._busy(holder)
        _warn(
            f"taking over the lock {key} of {self.remote.url} held by pid {holder.get('pid')} on "
            f"{holder.get('host')}: {why}; its committed parts are kept"
        )
        self.remote._call("clean up", obstore.delete, self.remote._store(), key)

    def _conflicts(self) -> list[str]:
        """The lock objects that may not be held beside ours."""
        keys = self.remote._call("list", self.remote._list_under, self.prefix)
        if self.name == "run":
            return [k for k in keys if k != self.key]
        return [k for k in keys if k == self.prefix + "run.json"]

    def acquire(self) -> None:
        for _ in range(3):
            if self._create():
                break
            self._take_over_or_fail(self.key)
        else:
            raise self._busy((self._read(self.key) or ({}, None))[0])
        try:
            for key in self._conflicts():
                self._take_over_or_fail(key)
        except BaseException:
            self.release()
            raise
        self._thread = threading.Thread(target=self._heartbeat, name="octbatch-s3-lock", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.stale_s / 4) and self.beat():
            pass

    def beat(self) -> bool:
        """Refresh the lock (a conditional put on its ETag); False once another run has taken it."""
        import obstore
        import obstore.exceptions as oe

        try:
            mode: Any = {"e_tag": self._etag} if self._etag else "overwrite"
            self._etag = obstore.put(self.remote._store(), self.key, self._body(), mode=mode).get("e_tag")
        except oe.PreconditionError:
            _warn(f"lost the lock {self.key} of {self.remote.url} (another run took it over)")
            return False
        except Exception:  # noqa: BLE001 - a missed heartbeat is retried; the next one may pass
            pass
        return True

    def release(self) -> None:
        import obstore

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        got = self._read(self.key)
        if got is not None and got[0].get("token") == self.token:  # never delete a lock that is not ours
            self.remote._call("clean up", obstore.delete, self.remote._store(), self.key)

    def __enter__(self) -> S3Lock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
