"""Commit: the previous table and the part files become one new table, each discovered row once.

`merge_into` streams them into a temp file renamed over the output (readers always see a whole
table); `merge` is `octbatch merge`, which assembles the slices of `--slice i/N` runs. An s3:// OUT
is staged locally first (the committed parts and slice manifests only: octbatch.objstore_out),
merged the same way, and published in one PUT.
(The module is not called merge.py so that `octbatch.merge` stays the public function.)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ._version import __version__
from .errors import OctbatchError
from .frames import row_key
from .objstore import is_url
from .plan import Selection, keyed_entries
from .progress import NullReporter, Reporter
from .results import atomic_write_parquet, read_metadata, row_keys, schema_from_metadata
from .summary import RunSummary
from .workdir import RunLock, WorkDir

__all__ = ["merge", "merge_into"]


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """Add the columns a table of an older octbatch lacks (e.g. frame, DICOM provenance) as nulls."""
    for f in schema:
        if f.name not in t.column_names:
            t = t.append_column(f.name, pa.nulls(t.num_rows, f.type))
    return t


class _KeepOnce:
    """Filters tables to the rows of discovered keys, each key once (the first source wins)."""

    def __init__(self, discovered: set[int], schema: pa.Schema):
        self.discovered = discovered
        self.schema = schema
        self.seen: set[int] = set()
        self.dropped = 0  # rows of keys no longer discovered (deleted or changed files)

    def _mask(self, t: pa.Table) -> pa.Array:
        mask = []
        for key in map(
            row_key,
            t.column("path").to_pylist(),
            t.column("frame").to_pylist(),
            t.column("bytes").to_pylist(),
            t.column("mtime").cast(pa.int64()).to_pylist(),
            t.column("etag").to_pylist(),
        ):
            keep = key in self.discovered and key not in self.seen
            if keep:
                self.seen.add(key)
            elif key not in self.discovered:
                self.dropped += 1
            mask.append(keep)
        return pa.array(mask, pa.bool_())

    def tables(self, path: str) -> Iterator[pa.Table]:
        schema = self.schema
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65536):
            t = _conform(pa.Table.from_batches([batch]), schema)
            t = t.filter(self._mask(t))
            if t.num_rows:
                yield t.select(schema.names).cast(schema)


def _nothing_to_merge(out: str, discovered: set[int], unchanged: bool) -> bool:
    """No parts, and `out` holds exactly the discovered keys: keep the file as it is. Every discovered
    key was found committed in `out`, whose keys are unique, so equal counts mean equal sets."""
    n = pq.ParquetFile(out).metadata.num_rows
    return n == len(discovered) and (unchanged or all(k in discovered for k, _ in row_keys(out, with_status=False)))


def merge_into(
    out: str,
    use_previous: bool,
    wd: WorkDir,
    discovered: set[int],
    schema: pa.Schema,
    rep: Reporter,
    unchanged: bool = False,
) -> tuple[int, int]:
    """Stream the parts and the previous result into a new out file; keep each discovered file once.

    Rows from parts win over rows of the previous result (they are newer). Returns (rows, dropped).
    """
    parts = wd.parts()
    if not parts and use_previous and _nothing_to_merge(out, discovered, unchanged):
        return pq.ParquetFile(out).metadata.num_rows, 0
    keep = _KeepOnce(discovered, schema)

    def tables() -> Iterator[pa.Table]:
        for p in parts:
            yield from keep.tables(p)
        if use_previous:
            yield from keep.tables(out)

    rep.log(f"merging {len(parts)} part file(s){' and the previous result' if use_previous else ''} into {out}")
    rows = atomic_write_parquet(out, tables(), schema)
    for p in parts:
        try:
            os.unlink(p)
        except OSError:
            pass
    # Gone: the parts are in `out` now. Keep run.json so the next run knows the settings.
    return rows, keep.dropped


# --- octbatch merge ---------------------------------------------------------------------------
def _finished_slices(wd: WorkDir, allow_missing: bool) -> dict:
    """The slice markers of the work folder, refusing a mix of N or a missing slice."""
    done = wd.slices_done()
    ns = {n for (_, n) in done}
    if len(ns) > 1:
        raise OctbatchError(
            f"slices of different counts were run: {sorted(ns)}",
            "Use one N for every --shard i/N of a job, or --overwrite and rerun.",
        )
    if ns:
        n = ns.pop()
        missing = [i for i in range(n) if (i, n) not in done]
        if missing and not allow_missing:
            raise OctbatchError(
                f"slice(s) {', '.join(f'{i}/{n}' for i in missing)} of {n} have not finished",
                "Run octbatch run with --shard for each missing slice (same --out), then merge again.",
            )
    return done


def _gaps(discovered: set[int], sources: list[str], allow_missing: bool) -> int:
    """How many discovered keys no source has a row for (refused unless allow_missing)."""
    have: set[int] = set()
    for src in sources:
        have.update(k for k, _ in row_keys(src, with_status=False))
    gaps = len(discovered - have)
    if gaps and not allow_missing:
        raise OctbatchError(
            f"{gaps} file(s) of the archive have no row yet (added or changed after the slices ran?)",
            "Run octbatch run again with the same --out (without --shard) to process them, or merge --allow-missing.",
        )
    return gaps


def merge(
    out: str, *, archive: str | None = None, reporter: Reporter | None = None, allow_missing: bool = False
) -> RunSummary:
    """Assemble the parts of `--slice i/N` runs (and any previous result) into one table.

    Refuses when a slice of the N is missing, or when a discovered file has no row, unless
    allow_missing is given.
    """
    rep = reporter or NullReporter()
    t0 = time.perf_counter()
    if is_url(out):
        return _merge_remote(out, archive, rep, allow_missing)
    out = os.path.abspath(out)
    wd = WorkDir(out)
    state = wd.read_settings()
    if state is None:
        raise OctbatchError(
            f"no octbatch work folder at {wd.path}", "Run octbatch run ... --out OUT --shard i/N first (same --out)."
        )
    archive = archive or state.get("archive") or ""
    archive = archive.rstrip("/") if is_url(archive) else os.path.abspath(archive)
    done = _finished_slices(wd, allow_missing)
    with RunLock(out):
        sel = Selection.from_state(state, archive)
        discovered = {key for _, key in keyed_entries(sel, wd.path, lambda pid: None)}
        use_previous = os.path.exists(out)
        gaps = _gaps(discovered, ([out] if use_previous else []) + wd.parts(), allow_missing)
        # The model is needed only for the schema: read it from the parts' own metadata.
        md = read_metadata((wd.parts() or [out])[0])
        extra = {
            "merged_slices": len(done),
            **({"phi": md["phi"]} if md.get("phi") else {}),
            **({"gate": md["gate"]} if md.get("gate") else {}),
        }
        schema, model_sha256 = schema_from_metadata(md, archive_root=archive, version=__version__, extra=extra)
        rows, dropped = merge_into(out, use_previous, wd, discovered, schema, rep)
        wd.clear_slice_markers()
    s = RunSummary(
        out=out,
        archive=archive,
        run_id="merge",
        discovered=len(discovered),
        rows=rows,
        merged=True,
        dropped_deleted=dropped,
        seconds=time.perf_counter() - t0,
        model_sha256=model_sha256,
    )
    s.failed_files = gaps
    return s


def _merge_remote(url: str, archive: str | None, rep: Reporter, allow_missing: bool) -> RunSummary:
    """`octbatch merge s3://...`: stage what the slices committed, merge it locally, publish."""
    from .objstore_lock import S3Lock
    from .objstore_out import RemoteOut

    remote = RemoteOut(url)
    with S3Lock(remote):  # alone on the table: no slice may commit while the merge reads
        staged = remote.stage(overwrite=False)
        if not os.path.exists(WorkDir(staged).run_json):
            raise OctbatchError(
                f"no octbatch run under {url}.parts (no run.json there)",
                "Run octbatch run ... --out OUT --slice i/N first (same --out).",
            )
        s = merge(staged, archive=archive, reporter=rep, allow_missing=allow_missing)
        remote.publish()
    s.out = url
    return s
