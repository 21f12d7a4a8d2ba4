"""The output table: Arrow schema, per-shard part files (temp + atomic rename), atomic writes, row keys."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import OctbatchError
from .frames import PROVENANCE_FIELDS, provenance_values, row_key

__all__ = [
    "make_schema",
    "rows_to_table",
    "write_part",
    "atomic_write_parquet",
    "read_metadata",
    "file_metadata",
    "prob_column",
    "META_KEY",
    "ShardRows",
    "fsync_dir",
    "STATUSES",
    "PREDICTED_STATUSES",
    "schema_from_metadata",
    "row_keys",
]

META_KEY = b"octbatch"
# Row statuses: ok; suspect (the OCT gate flagged it, prediction kept); not_oct (gate rejected it,
# no prediction); error (unreadable); failed (its shard failed every retry).
STATUSES = ("ok", "suspect", "not_oct", "error", "failed")
PREDICTED_STATUSES = ("ok", "suspect")
COMPRESSION = "zstd"


def prob_column(cls: str) -> str:
    return f"p_{cls}"


def make_schema(classes: Sequence[str], metadata: dict | None = None) -> pa.Schema:
    fields = [
        pa.field("path", pa.string(), nullable=False),
        pa.field("bytes", pa.int64()),
        pa.field("mtime", pa.timestamp("us", tz="UTC")),
        pa.field("label", pa.string()),
        pa.field("patient_id", pa.string()),
        pa.field("image_no", pa.int32()),
        pa.field("pred", pa.string()),
        pa.field("confidence", pa.float32()),
        *[pa.field(prob_column(c), pa.float32()) for c in classes],
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("model_sha256", pa.string()),
        pa.field("backend", pa.string()),
        pa.field("precision", pa.string()),
        pa.field("decoder", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("processed_at", pa.timestamp("us", tz="UTC")),
        # The OCT gate (octbatch.gate): null when --gate off or the file could not be read.
        pa.field("oct_score", pa.float32()),
        pa.field("gate_reason", pa.string()),
        *PROVENANCE_FIELDS,  # frame + DICOM provenance (octbatch.frames)
        pa.field("etag", pa.string()),  # an S3 object's ETag (part of its version); null for files on disk
    ]
    md = {META_KEY: json.dumps(metadata, sort_keys=True).encode()} if metadata else None
    return pa.schema(fields, metadata=md)


class ShardRows:
    """Column buffers for one shard's rows, filled batch by batch."""

    def __init__(self, classes: Sequence[str]):
        self.classes = list(classes)
        self.cols: dict[str, list] = {
            k: []
            for k in (
                "path",
                "bytes",
                "mtime",
                "label",
                "patient_id",
                "image_no",
                "status",
                "error",
                "width",
                "height",
                "processed_at",
                "oct_score",
                "gate_reason",
                "etag",
            )
        }
        self.probs: list[np.ndarray] = []
        self.provenance: list[tuple] = []

    def add(self, entries, probs: np.ndarray, sizes, errors, processed_at_us: int, gate=None) -> None:
        """gate: None (off) or (scores, reasons, mode) from octbatch.gate; a readable file with a
        reason gets status `suspect` (mode flag: prediction kept) or `not_oct` (mode reject)."""
        c = self.cols
        scores: Any
        reasons: Any
        scores, reasons, mode = gate if gate is not None else (None, None, "off")
        for k, (e, size, err) in enumerate(zip(entries, sizes, errors)):
            c["path"].append(e.path)
            c["bytes"].append(e.size)
            c["mtime"].append(e.mtime_ns // 1000)
            c["etag"].append(e.etag)
            label, patient, image_no = e.names()
            c["label"].append(label)
            c["patient_id"].append(patient)
            c["image_no"].append(image_no)
            status, score, reason = ("ok" if err is None else "error"), None, None
            if err is None and scores is not None:
                score, reason = float(scores[k]), reasons[k]
                if reason is not None:
                    status = "suspect" if mode == "flag" else "not_oct"
            c["status"].append(status)
            c["error"].append(err)
            c["oct_score"].append(score)
            c["gate_reason"].append(reason)
            c["width"].append(size[0] if size else None)
            c["height"].append(size[1] if size else None)
            c["processed_at"].append(processed_at_us)
            self.provenance.append(provenance_values(e))
        self.probs.append(probs)

    def __len__(self) -> int:
        return len(self.cols["path"])


def rows_to_table(
    rows: ShardRows, schema: pa.Schema, *, model_sha256: str, backend: str, precision: str, decoder: str, run_id: str
) -> pa.Table:
    n = len(rows)
    k = len(rows.classes)
    probs = np.concatenate(rows.probs, axis=0) if rows.probs else np.zeros((0, k), np.float32)
    status_ok = np.array([s in PREDICTED_STATUSES for s in rows.cols["status"]], dtype=bool)
    argmax = probs.argmax(axis=1) if n else np.zeros(0, np.int64)
    conf = probs.max(axis=1) if n else np.zeros(0, np.float32)
    classes = np.array(rows.classes, dtype=object)
    no_pred: Any = None
    pred = pa.array(np.where(status_ok, classes[argmax] if n else classes[:0], no_pred), pa.string())
    mask = ~status_ok
    arrays = {
        "path": pa.array(rows.cols["path"], pa.string()),
        "bytes": pa.array(rows.cols["bytes"], pa.int64()),
        "mtime": pa.array(rows.cols["mtime"], pa.timestamp("us", tz="UTC")),
        "label": pa.array(rows.cols["label"], pa.string()),
        "patient_id": pa.array(rows.cols["patient_id"], pa.string()),
        "image_no": pa.array(rows.cols["image_no"], pa.int32()),
        "pred": pred,
        "confidence": pa.array(conf.astype(np.float32), pa.float32(), mask=mask),
    }
    for j, cls in enumerate(rows.classes):
        arrays[prob_column(cls)] = pa.array(probs[:, j].astype(np.float32), pa.float32(), mask=mask)

    def const(v):
        return pa.array([v] * n, pa.string())

    arrays.update(
        {
            "status": pa.array(rows.cols["status"], pa.string()),
            "error": pa.array(rows.cols["error"], pa.string()),
            "width": pa.array(rows.cols["width"], pa.int32()),
            "height": pa.array(rows.cols["height"], pa.int32()),
            "model_sha256": const(model_sha256),
            "backend": const(backend),
            "precision": const(precision),
            "decoder": const(decoder),
            "run_id": const(run_id),
            "processed_at": pa.array(rows.cols["processed_at"], pa.timestamp("us", tz="UTC")),
            "oct_score": pa.array(rows.cols["oct_score"], pa.float32()),
            "gate_reason": pa.array(rows.cols["gate_reason"], pa.string()),
            "etag": pa.array(rows.cols["etag"], pa.string()),
        }
    )
    prov: list = list(zip(*rows.provenance)) if n else [[] for _ in PROVENANCE_FIELDS]
    for f, values in zip(PROVENANCE_FIELDS, prov):
        arrays[f.name] = pa.array(list(values), f.type)
    return pa.Table.from_pydict(arrays, schema=schema)


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_error(exc: OSError, target: str) -> OctbatchError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OctbatchError(
            f"out of disk space while writing {target}",
            "Committed shards are kept: free some space and run the same command again to resume.",
        )
    return OctbatchError(
        f"cannot write {target}: {exc.strerror or exc}",
        "Check the output folder's permissions and free space, then run again to resume.",
    )


def atomic_write_parquet(
    path: str, tables: Iterable[pa.Table], schema: pa.Schema, *, row_group_size: int = 65536
) -> int:
    """Write tables to a temp file in the target folder, fsync, and rename over `path`.

    A reader sees the old file or the new one, never a half-written one. Returns rows written.
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=folder)
    os.close(fd)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression=COMPRESSION, write_statistics=True) as w:
            for t in tables:
                if t.num_rows:
                    w.write_table(t, row_group_size=row_group_size)
                    rows += t.num_rows
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
        return rows
    except OSError as exc:
        _silent_unlink(tmp)
        raise _disk_error(exc, path) from exc
    except BaseException:
        _silent_unlink(tmp)
        raise


def write_part(table: pa.Table, parts_dir: str, shard_id: str) -> str:
    if parts_dir.startswith("s3://"):  # no rename there: unique part + commit object (octbatch/objstore_out.py)
        from .objstore_out import write_part_object

        return write_part_object(table, parts_dir, shard_id)
    path = os.path.join(parts_dir, f"part-{shard_id}.parquet")
    atomic_write_parquet(path, [table], table.schema)
    return path


def _silent_unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def read_metadata(path: str) -> dict:
    """The octbatch metadata of a results file (or {} when it has none)."""
    md = pq.read_schema(path).metadata or {}
    raw = md.get(META_KEY)
    return json.loads(raw) if raw else {}


def file_metadata(model, *, archive_root: str, version: str, extra: dict | None = None) -> dict:
    d = {
        "octbatch_version": version,
        "classes": list(model.classes),
        "preprocessing": json.loads(model.preprocessing.to_json()),
        "model_sha256": model.sha256,
        "model_path": os.path.basename(model.path),
        "model_card": model.card,
        "archive_root": archive_root,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if extra:
        d.update(extra)
    return d


def schema_from_metadata(
    md: dict, *, archive_root: str, version: str, extra: dict | None = None
) -> tuple[pa.Schema, str]:
    """(output schema, model sha256) rebuilt from a part's or table's own octbatch metadata, for a
    merge that has no model file at hand: the same schema file_metadata + make_schema give a run."""
    from .preprocess import Preprocessing

    classes = tuple(md.get("classes") or ())
    pre = Preprocessing.from_json(json.dumps(md.get("preprocessing")))
    d = {
        "octbatch_version": version,
        "classes": list(classes),
        "preprocessing": json.loads(pre.to_json()),
        "model_sha256": md.get("model_sha256", ""),
        "model_path": os.path.basename(md.get("model_path", "")),
        "model_card": md.get("model_card", ""),
        "archive_root": archive_root,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    return make_schema(classes, d), d["model_sha256"]


def row_keys(path: str, with_status: bool = True) -> Iterator[tuple[int, str | None]]:
    """(row key, status) for every row of a results/part file, read column-wise in batches."""
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    has_frame = "frame" in names  # tables of octbatch < frames have none
    has_etag = "etag" in names  # nor of octbatch < S3 ETags
    cols = ["path", "bytes", "mtime"] + (["status"] if with_status else []) + (["frame"] if has_frame else [])
    cols += ["etag"] if has_etag else []
    for batch in pf.iter_batches(batch_size=65536, columns=cols):
        paths = batch.column(0).to_pylist()
        sizes = batch.column(1).to_pylist()
        mtimes = batch.column(2).cast(pa.int64()).to_pylist()
        stats = batch.column(3).to_pylist() if with_status else [None] * len(paths)
        frames = batch.column("frame").to_pylist() if has_frame else [None] * len(paths)
        etags = batch.column("etag").to_pylist() if has_etag else [None] * len(paths)
        for p, s, m, st, fr, et in zip(paths, sizes, mtimes, stats, frames, etags, strict=True):
            yield row_key(p, fr, s, m, et), st
