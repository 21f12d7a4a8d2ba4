"""Results on S3-compatible object storage (`--out s3://bucket/results/run.parquet`): exactly once
without rename.

Object stores have no rename, so the local protocol (temp file + rename) becomes:

  <out>.parts/part-<shard id>-<uuid>.parquet   a shard's rows; a unique name per attempt, never overwritten
  <out>.parts/commit-<shard id>.json           {"part": name, "rows": n}: written LAST, with a conditional
                                                put (If-None-Match) so that the first attempt to finish wins;
                                                a later attempt deletes its own part
  <out>.parts/run.json                         the settings every part was made with (as on disk)
  <out>.parts/phi.key                          the random per-table pseudonym key (created once: conditional put)
  <out>.parts/slice-<i>-of-<N>.json            the manifest of a finished `--slice i/N`: written when the
                                                slice's parts are all committed; `octbatch merge` needs all N
  <out>                                        the table: written whole to a local temp file, then one PUT

Readers (the next run, the merge) trust only committed parts: a part with no commit is an attempt
that died before committing and is ignored (and deleted by the next merge). During a run a reader
of <out> sees the previous table, whole; the new one replaces it in one PUT at the end.

The driver stages the run in a local folder (the previous table, run.json and the committed parts
are fetched there) so that the same resume/incremental/merge code as on disk runs unchanged; only
the actors' parts go straight to the bucket. After the merge the table is put, then the merged
commits are deleted (commit first, then its part: a part never loses its commit while trusted).
Slices (`--slice i/N` with an s3:// --out) each stage in a folder of their own, commit their parts
and their slice manifest to the bucket and publish no table; `octbatch merge s3://...` stages the
committed parts and the manifests, merges them as on disk and publishes the table in one PUT.
Runs, slices and merges of one s3:// --out, from any machines, are kept apart by lock objects in
the bucket (`<out>.lock/`, octbatch/objstore_lock.py), taken before the stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid

from .errors import OctbatchError
from .objstore import _brief, _store, split_url

__all__ = ["write_part_object", "RemoteOut"]


def _split_key(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise OctbatchError(f"--out {url} names no object", "Give s3://BUCKET/PATH/results.parquet.")
    return bucket, key


def write_part_object(table, parts_url: str, shard_id: str) -> str:
    """Write one shard's part under a unique name, then commit it. Returns the part's URL."""
    import io

    import obstore
    import obstore.exceptions as oe
    import pyarrow.parquet as pq

    from .results import COMPRESSION

    bucket, prefix = split_url(parts_url)
    store = _store(bucket)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=COMPRESSION, write_statistics=True)
    name = f"part-{shard_id}-{uuid.uuid4().hex[:12]}.parquet"
    statuses = set(table.column("status").to_pylist())
    failed = statuses == {"failed"}  # written by the driver for a shard that failed every attempt
    try:
        obstore.put(store, prefix + name, buf.getvalue())
        commit = json.dumps({"part": name, "rows": table.num_rows, "shard": shard_id, "failed": failed}).encode()
        key = f"{prefix}commit-{shard_id}.json"
        try:
            obstore.put(store, key, commit, mode="create")
        except oe.AlreadyExistsError:
            if failed or not _replace_failed(store, prefix, key, commit):
                obstore.delete(store, prefix + name)  # another attempt of this shard committed first
        except oe.NotSupportedError:
            obstore.put(store, key, commit)  # no conditional put: last wins, same rows
    except OctbatchError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise OctbatchError(
            f"cannot write {parts_url}{name}: {_brief(exc)}",
            "Check that the credentials may s3:PutObject and s3:DeleteObject there; committed shards are kept.",
        ) from None
    return f"s3://{bucket}/{prefix}{name}"


def _is_slice_manifest(name: str) -> bool:
    return name.startswith("slice-") and name.endswith(".json") and "/" not in name


def _replace_failed(store, prefix: str, key: str, commit: bytes) -> bool:
    """The shard's commit names a `failed` part (a slice gave up on it; this is the rerun that
    retries it): put ours in its place, conditional on its ETag, and delete the failed part. As on
    disk, where the rerun's part file replaces the failed one. False: the commit is a real one."""
    import obstore
    import obstore.exceptions as oe

    got = obstore.get(store, key)
    etag = got.meta.get("e_tag")
    old = json.loads(bytes(got.bytes()))
    if not old.get("failed"):
        return False
    try:
        obstore.put(store, key, commit, mode={"e_tag": etag} if etag else "overwrite")
    except oe.PreconditionError:
        return False  # another attempt replaced it first
    try:
        obstore.delete(store, prefix + old["part"])
    except Exception:  # noqa: BLE001 - an orphan part is deleted by the next merge
        pass
    return True


class RemoteOut:
    """The driver's side: stage a run of an s3:// --out in a local folder, publish the table at the end."""

    def __init__(self, url: str, slice_: tuple[int, int] | None = None):
        self.url = url
        self.bucket, self.key = _split_key(url)
        self.parts_url = f"s3://{self.bucket}/{self.key}.parts"
        self.parts_prefix = self.key + ".parts/"
        self.slice = slice_
        # A stage per slice: two slices of one job on one machine never share (or wipe) a stage.
        tag = url + (f"#slice-{slice_[0]}-of-{slice_[1]}" if slice_ else "")
        digest = hashlib.blake2b(tag.encode(), digest_size=8).hexdigest()
        self.stage_dir = os.path.join(tempfile.gettempdir(), f"octbatch-{os.getuid()}-{digest}")
        self.local_out = os.path.join(self.stage_dir, os.path.basename(self.key) or "results.parquet")
        self._merged: dict[str, tuple[str | None, str]] = {}  # commit key -> (its ETag, part key) pulled so far

    def _store(self):
        return _store(self.bucket)

    def _call(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except OctbatchError:
            raise
        except Exception as exc:  # noqa: BLE001 - obstore errors become user errors
            import obstore.exceptions as oe

            text = str(exc)
            if "NoSuchBucket" in text:
                raise OctbatchError(
                    f"bucket of {self.url} does not exist",
                    "Create it first, or check the name, AWS_ENDPOINT_URL and AWS_REGION.",
                ) from None
            if isinstance(exc, (oe.PermissionDeniedError, oe.UnauthenticatedError)) or "403" in text:
                raise OctbatchError(
                    f"S3 refused to {what} {self.url} (credentials rejected or no permission: {_brief(exc)})",
                    "Check the AWS_* credentials and that they may read, write and delete under that prefix.",
                ) from None
            raise OctbatchError(
                f"cannot {what} {self.url}: {_brief(exc)}", "Check the URL, AWS_ENDPOINT_URL and the network."
            ) from None

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` unless it exists (a conditional put, If-None-Match); True if this call
        created it. A store without conditional puts gets a plain put (True)."""
        import obstore
        import obstore.exceptions as oe

        def put() -> bool:
            try:
                obstore.put(self._store(), key, data, mode="create")
                return True
            except oe.AlreadyExistsError:
                return False
            except oe.NotSupportedError:
                obstore.put(self._store(), key, data)
                return True

        return self._call("write", put)

    def stage(self, overwrite: bool) -> str:
        """Fetch the previous table, run.json and the committed parts; returns the local out path."""
        import obstore
        import obstore.exceptions as oe

        parts_dir = self.local_out + ".parts"
        os.makedirs(parts_dir, exist_ok=True)
        for name in os.listdir(parts_dir):
            os.unlink(os.path.join(parts_dir, name))  # the bucket is the truth, not a previous stage
        if os.path.exists(self.local_out):
            os.unlink(self.local_out)
        if overwrite and self.slice is None:
            self._delete_prefix()
            return self.local_out

        def fetch(key, dest):
            try:
                data = bytes(obstore.get(self._store(), key).bytes())
            except (oe.NotFoundError, FileNotFoundError):
                return False
            with open(dest, "wb") as f:
                f.write(data)
            return True

        self._call("read", fetch, self.key, self.local_out)
        self._call("read", fetch, self.parts_prefix + "run.json", os.path.join(parts_dir, "run.json"))
        # The random per-table pseudonym key (octbatch.phi) lives beside the parts, in the bucket too.
        if self._call("read", fetch, self.parts_prefix + "phi.key", os.path.join(parts_dir, "phi.key")):
            os.chmod(os.path.join(parts_dir, "phi.key"), 0o600)
        self.pull_parts()
        for key in self._call("list", self._list):
            name = key[len(self.parts_prefix) :]
            if _is_slice_manifest(name):
                self._call("read", fetch, key, os.path.join(parts_dir, name))
        return self.local_out

    def _list(self):
        return self._list_under(self.parts_prefix)

    def _list_under(self, prefix: str) -> list[str]:
        return [path for path, _ in self._list_meta(prefix)]

    def _list_meta(self, prefix: str) -> list[tuple[str, str | None]]:
        """(key, ETag) of every object under prefix."""
        import obstore

        out: list[tuple[str, str | None]] = []
        for chunk in obstore.list(self._store(), prefix, chunk_size=1000):
            out.extend((m["path"], m.get("e_tag")) for m in chunk)
        return out

    def pull_parts(self) -> int:
        """Fetch every committed part not fetched yet (or whose commit changed: a failed part
        replaced by a retry) into the stage's parts folder."""
        import obstore

        listed = self._call("list", self._list_meta, self.parts_prefix)
        n = 0
        for key, etag in listed:
            name = key[len(self.parts_prefix) :]
            if not (name.startswith("commit-") and name.endswith(".json")):
                continue
            if key in self._merged and self._merged[key][0] == etag:
                continue
            commit = self._call("read", lambda k=key: json.loads(bytes(obstore.get(self._store(), k).bytes())))
            part_key = self.parts_prefix + commit["part"]
            shard = name[len("commit-") : -len(".json")]
            dest = os.path.join(self.local_out + ".parts", f"part-{shard}.parquet")
            data = self._call("read", lambda k=part_key: bytes(obstore.get(self._store(), k).bytes()))
            with open(dest + ".tmp-dl", "wb") as f:
                f.write(data)
            os.replace(dest + ".tmp-dl", dest)
            self._merged[key] = (etag, part_key)
            n += 1
        return n

    def save_settings(self) -> bool:
        """Put run.json, and the per-table pseudonym key if this run made it. The key is put with a
        conditional put: when another slice put its own first, that one is fetched over ours and
        True is returned (the caller must load the key again)."""
        import obstore

        with open(os.path.join(self.local_out + ".parts", "run.json"), "rb") as f:
            data = f.read()
        self._call("write", obstore.put, self._store(), self.parts_prefix + "run.json", data)
        key_file = os.path.join(self.local_out + ".parts", "phi.key")
        if not os.path.exists(key_file):
            return False
        with open(key_file, "rb") as f:  # a random per-table key: the next run into this table must find it
            mine = f.read()
        key = self.parts_prefix + "phi.key"
        if self.put_if_absent(key, mine):
            return False
        theirs = self._call("read", lambda: bytes(obstore.get(self._store(), key).bytes()))
        if theirs == mine:
            return False
        with open(key_file + ".tmp-dl", "wb") as f:
            f.write(theirs)
        os.chmod(key_file + ".tmp-dl", 0o600)
        os.replace(key_file + ".tmp-dl", key_file)
        return True

    def save_slice_manifest(self, i: int, n: int, local_path: str) -> None:
        """A finished slice's manifest (written by workdir.WorkDir locally) goes to the bucket, last."""
        import obstore

        with open(local_path, "rb") as f:
            data = f.read()
        self._call("write", obstore.put, self._store(), f"{self.parts_prefix}slice-{i}-of-{n}.json", data)

    def publish(self) -> None:
        """The table in one PUT; then the merged commits go (each before its part), and every part
        that no remaining commit names (attempts that lost or never committed)."""
        import obstore

        with open(self.local_out, "rb") as f:
            self._call("write", obstore.put, self._store(), self.key, f)
        for commit_key, (_, part_key) in self._merged.items():
            self._call("clean up", obstore.delete, self._store(), commit_key)
            self._call("clean up", obstore.delete, self._store(), part_key)
        self._merged.clear()
        keys = self._call("list", self._list)
        named = set()
        for key in keys:
            name = key[len(self.parts_prefix) :]
            if name.startswith("commit-") and name.endswith(".json"):  # committed after our last pull
                named.add(
                    self.parts_prefix
                    + self._call("read", lambda k=key: json.loads(bytes(obstore.get(self._store(), k).bytes())))["part"]
                )
        for key in keys:
            name = key[len(self.parts_prefix) :]
            if (name.startswith("part-") and key not in named) or _is_slice_manifest(name):
                self._call("clean up", obstore.delete, self._store(), key)  # slices: in the table now

    def _delete_prefix(self) -> None:
        import obstore

        for key in self._call("list", self._list):
            self._call("clean up", obstore.delete, self._store(), key)
