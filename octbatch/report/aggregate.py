"""One streaming pass over a results table: every number the text and HTML reports show.

Reads only the columns it needs, one record batch at a time (never the whole table), with pyarrow
compute and numpy bincounts; what it keeps grows with the number of classes, distinct error messages
and patients, not with rows. Works with any table octbatch writes: columns it does not know are
ignored, statuses other than ok/error/failed are counted as they are, and optional columns (label,
patient_id, confidence) may be missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import OctbatchError

__all__ = ["Aggregate", "aggregate", "error_key", "CONF_BINS", "RELIABILITY_BINS", "PROVENANCE_COLUMNS"]

CONF_BINS = 20  # confidence histogram bins per predicted class
RELIABILITY_BINS = (
    15  # equal-width confidence bins of the reliability diagram / ECE (the usual 15, as training reports)
)
BATCH_ROWS = 65536
PROVENANCE_COLUMNS = ("model_sha256", "backend", "precision", "decoder", "run_id")
_REQUIRED = ("path", "status", "pred")  # path: every octbatch table has it; read only with details
_OPTIONAL = ("label", "patient_id", "confidence", "error", *PROVENANCE_COLUMNS)
_PATIENT_COLS = ["patient_id", "pred", "n", "max_conf"]
_ERROR_EXAMPLES = 3
_MAX_ERROR_GROUPS = 500  # past this many distinct messages, the rest are counted under one "other" group


def error_key(msg: str | None) -> str:
    """The part of an error message that is the same for every file with that problem."""
    return (msg or "").split(":")[0].split("(")[0].strip()[:80] or "(no message)"


@dataclass
class Aggregate:
    path: str
    metadata: dict
    classes: list[str]
    rows: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    predicted: dict[str, int] = field(default_factory=dict)  # status=ok rows by predicted class (any class name)
    has_labels: bool = False
    labelled: int = 0  # ok rows whose label is one of the model's classes
    confusion: np.ndarray = field(init=False)  # [true, pred] counts over labelled rows
    conf_hist: np.ndarray = field(init=False)  # [pred class, bin] counts over ok rows
    rel_count: np.ndarray = field(init=False)
    rel_conf: np.ndarray = field(init=False)  # sum of confidence per reliability bin
    rel_correct: np.ndarray = field(init=False)  # labelled rows predicted right per reliability bin
    # (status, message key) -> {"count", "examples": [(path, full message)]}
    errors: dict[tuple[str, str], dict] = field(default_factory=dict)
    provenance: dict[str, dict[str, int]] = field(default_factory=dict)  # column -> value -> rows
    patients: Any = None  # pyarrow Table (patient_id, pred, n, max_conf) or None without patient_id
    samples: dict[str, Any] = field(default_factory=dict)  # name -> pyarrow Table of chosen rows

    def __post_init__(self) -> None:
        k = len(self.classes)
        self.confusion = np.zeros((k, k), np.int64)
        self.conf_hist = np.zeros((k, CONF_BINS), np.int64)
        self.rel_count = np.zeros(RELIABILITY_BINS, np.int64)
        self.rel_conf = np.zeros(RELIABILITY_BINS, np.float64)
        self.rel_correct = np.zeros(RELIABILITY_BINS, np.int64)

    @property
    def ok(self) -> int:
        return self.statuses.get("ok", 0)

    @property
    def accuracy(self) -> float | None:
        if not self.labelled:
            return None
        return float(np.trace(self.confusion)) / self.labelled

    def per_class(self) -> list[dict]:
        """precision, recall, F1 and support per class (None where undefined)."""
        cm = self.confusion
        out = []
        for i, c in enumerate(self.classes):
            tp = int(cm[i, i])
            support, predicted = int(cm[i].sum()), int(cm[:, i].sum())
            p = tp / predicted if predicted else None
            r = tp / support if support else None
            f1 = (
                2 * p * r / (p + r)
                if p is not None and r is not None and (p + r)
                else (0.0 if p is not None and r is not None else None)
            )
            out.append({"class": c, "precision": p, "recall": r, "f1": f1, "support": support, "predicted": predicted})
        return out

    def reliability(self) -> list[dict]:
        rows = []
        for b in range(RELIABILITY_BINS):
            n = int(self.rel_count[b])
            rows.append(
                {
                    "lo": b / RELIABILITY_BINS,
                    "hi": (b + 1) / RELIABILITY_BINS,
                    "n": n,
                    "confidence": float(self.rel_conf[b] / n) if n else None,
                    "accuracy": float(self.rel_correct[b] / n) if n else None,
                }
            )
        return rows

    @property
    def ece(self) -> float | None:
        """Expected calibration error: sum over bins of (rows in bin / rows) * |accuracy - mean confidence|."""
        n = int(self.rel_count.sum())
        if not n:
            return None
        m = self.rel_count > 0
        gap = np.abs(self.rel_correct[m] / self.rel_count[m] - self.rel_conf[m] / self.rel_count[m])
        return float((self.rel_count[m] / n * gap).sum())


def _open(path: str):
    import pyarrow.parquet as pq

    from ..results import read_metadata

    if not os.path.exists(path):
        raise OctbatchError(f"results file {path} does not exist", "Run octbatch run ... --out PATH first.")
    try:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        # constant-per-run columns read as dictionaries: no million copies of the same string
        pf = pq.ParquetFile(path, read_dictionary=[c for c in PROVENANCE_COLUMNS if c in names])
        md = read_metadata(path)
    except Exception as exc:  # noqa: BLE001
        raise OctbatchError(
            f"{path} is not an octbatch results table ({exc})", "Give the file written by octbatch run --out."
        ) from None
    missing = [c for c in _REQUIRED if c not in names]
    if missing:
        raise OctbatchError(
            f"{path} is not an octbatch results table (no column {', '.join(missing)})",
            "Give the file written by octbatch run --out.",
        )
    return pf, names, md


def aggregate(
    path: str, *, details: bool = True, samples_per_class: int = 4, top: int = 12, batch_rows: int = BATCH_ROWS
) -> Aggregate:
    """Stream the table at ``path`` once, ``batch_rows`` rows at a time (what bounds memory).

    ``details=False`` (the text summary) skips what only the HTML report shows: sample rows, patients,
    provenance columns and example paths of errors, and does not read those columns.
    ``top``: how many confident mistakes / least confident predictions to keep."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pf, names, md = _open(path)
    classes = _classes(pf, md, batch_rows)
    cols = [c for c in (*_REQUIRED, *_OPTIONAL) if c in names]
    if not details:
        names = names - {"path", "patient_id", *PROVENANCE_COLUMNS}
        cols = [c for c in cols if c in names]
    a = Aggregate(path=path, metadata=md, classes=classes, has_labels="label" in names)
    value_set = pa.array(classes, pa.string())
    patient_parts: list = []
    keep = ["path", "pred", "confidence"] + (["label"] if a.has_labels else [])
    cand: dict[str, object] = {}

    for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
        t = pa.Table.from_batches([batch])
        n = t.num_rows
        a.rows += n
        _add_counts(a.statuses, pc.value_counts(t.column("status")))
        for col in PROVENANCE_COLUMNS:
            if col in names:
                _add_counts(a.provenance.setdefault(col, {}), pc.value_counts(t.column(col)))
        is_ok = pc.fill_null(pc.equal(t.column("status"), "ok"), False)
        not_ok = t.filter(pc.invert(is_ok))
        if not_ok.num_rows:
            _add_errors(a, not_ok)
        ok = t.filter(is_ok)
        if not ok.num_rows:
            continue
        _add_counts(a.predicted, pc.value_counts(ok.column("pred")))
        if "confidence" not in names:
            continue
        pi, li, conf = _add_confidence(a, ok, value_set)
        if details:
            _add_samples(
                cand,
                ok.select([c for c in keep if c in ok.column_names]),
                pi,
                li,
                conf,
                classes,
                samples_per_class,
                top,
            )
        if "patient_id" in names:
            patient_parts = _add_patients(patient_parts, ok)
    if "patient_id" in names:
        a.patients = _merge_patients(patient_parts) if patient_parts else None
    a.samples = cand
    return a


def _classes(pf, md: dict, batch_rows: int) -> list[str]:
    """The model's classes from the metadata; for a table without octbatch metadata, what it predicted."""
    import pyarrow.compute as pc

    classes = list(md.get("classes") or [])
    if not classes:
        classes = sorted(
            {
                v
                for b in pf.iter_batches(batch_size=batch_rows, columns=["pred"])
                for v in pc.unique(b.column(0)).to_pylist()
                if v
            }
        )
    return classes


def _add_confidence(a: Aggregate, ok, value_set):
    """Count one batch's ok rows into the confidence histogram and, with labels, the confusion matrix
    and reliability bins. Returns (predicted index, label index or None, confidence) per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    k = len(a.classes)
    pi = pc.index_in(ok.column("pred"), value_set=value_set).to_numpy(zero_copy_only=False)
    conf = pc.fill_null(ok.column("confidence").cast(pa.float64()), float("nan")).to_numpy()
    valid = ~np.isnan(pi) & ~np.isnan(conf)
    pi_v = pi[valid].astype(np.int64)
    cb = np.clip((conf[valid] * CONF_BINS).astype(np.int64), 0, CONF_BINS - 1)
    a.conf_hist += np.bincount(pi_v * CONF_BINS + cb, minlength=k * CONF_BINS).reshape(k, CONF_BINS)
    li = None
    if a.has_labels:
        li = pc.index_in(ok.column("label"), value_set=value_set).to_numpy(zero_copy_only=False)
        lab = valid & ~np.isnan(li)
        li_l, pi_l, c_l = li[lab].astype(np.int64), pi[lab].astype(np.int64), conf[lab]
        a.labelled += int(lab.sum())
        a.confusion += np.bincount(li_l * k + pi_l, minlength=k * k).reshape(k, k)
        rb = np.clip((c_l * RELIABILITY_BINS).astype(np.int64), 0, RELIABILITY_BINS - 1)
        a.rel_count += np.bincount(rb, minlength=RELIABILITY_BINS)
        a.rel_conf += np.bincount(rb, weights=c_l, minlength=RELIABILITY_BINS)
        a.rel_correct += np.bincount(rb, weights=(li_l == pi_l).astype(np.float64), minlength=RELIABILITY_BINS).astype(
            np.int64
        )
    return pi, li, conf


def _add_patients(parts: list, ok) -> list:
    """Add one batch's (patient, predicted class) counts and max confidence to the partial tables."""
    import pyarrow.compute as pc

    p = ok.select(["patient_id", "pred", "confidence"]).filter(pc.is_valid(ok.column("patient_id")))
    if p.num_rows:
        g = p.group_by(["patient_id", "pred"]).aggregate([([], "count_all"), ("confidence", "max")])
        parts.append(g.select(["patient_id", "pred", "count_all", "confidence_max"]).rename_columns(_PATIENT_COLS))
        if sum(t.num_rows for t in parts) > 2_000_000:  # re-group the partials: memory follows patients, not batches
            parts = [_merge_patients(parts)]
    return parts


def _add_counts(acc: dict, vc) -> None:
    for item in vc.to_pylist():
        key = item["values"]
        key = "(none)" if key is None else key
        acc[key] = acc.get(key, 0) + item["counts"]


def _add_errors(a: Aggregate, t) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if "error" in t.column_names:
        msg = pc.fill_null(t.column("error"), "")
    else:
        msg = pa.array([""] * t.num_rows, pa.string())
    key = pc.utf8_slice_codeunits(
        pc.utf8_trim_whitespace(pc.replace_substring_regex(msg, pattern=r"[:(].*$", replacement="")), 0, 80
    )
    key = pc.if_else(pc.equal(key, ""), "(no message)", key)
    status = pc.fill_null(t.column("status"), "(none)")
    g = pa.table({"status": status, "key": key}).group_by(["status", "key"]).aggregate([([], "count_all")])
    for st, kk, cnt in zip(
        g.column("status").to_pylist(), g.column("key").to_pylist(), g.column("count_all").to_pylist()
    ):
        if (st, kk) not in a.errors and len(a.errors) >= _MAX_ERROR_GROUPS:
            kk = "(other messages)"
        e = a.errors.setdefault((st, kk), {"count": 0, "examples": []})
        e["count"] += cnt
        if len(e["examples"]) < _ERROR_EXAMPLES and kk != "(other messages)" and "path" in t.column_names:
            m = pc.and_(pc.equal(status, st), pc.equal(key, kk))
            ex = t.filter(m).slice(0, _ERROR_EXAMPLES - len(e["examples"]))
            errs = ex.column("error").to_pylist() if "error" in ex.column_names else [None] * ex.num_rows
            e["examples"].extend(zip(ex.column("path").to_pylist(), errs))


def _topk(t, n: int, order: str):
    import pyarrow.compute as pc

    idx = pc.select_k_unstable(t, k=min(n, t.num_rows), sort_keys=[("confidence", order), ("path", "ascending")])
    return t.take(idx)


def _add_samples(cand: dict, ok, pi, li, conf, classes, per_class: int, top: int) -> None:
    """Keep, across batches, the most confident rows per predicted class, the most confident mistakes and
    the least confident predictions. Per batch, numpy finds the rows at least as good as the n-th best (ties
    kept, so nothing that could win is lost); only those are taken from the batch and ranked by (confidence,
    path) with select_k, together with the candidates kept so far."""
    import pyarrow as pa

    good = ~np.isnan(conf)

    def pick(name, mask, n, order):
        idx = np.flatnonzero(mask)
        if not idx.size:
            return
        if idx.size > n:
            key = -conf[idx] if order == "descending" else conf[idx]
            idx = idx[key <= np.partition(key, n - 1)[n - 1]]
        t = _topk(ok.take(pa.array(idx)), n, order)
        cand[name] = _topk(pa.concat_tables([cand[name], t]), n, order) if name in cand else t

    for j, c in enumerate(classes):
        pick(f"class:{c}", good & (pi == j), per_class, "descending")
    pick("unsure", good, top, "ascending")
    if li is not None:
        pick("mistakes", good & ~np.isnan(li) & (pi != li), top, "descending")


def _merge_patients(parts):
    import pyarrow as pa

    t = pa.concat_tables(parts)
    g = t.group_by(["patient_id", "pred"]).aggregate([("n", "sum"), ("max_conf", "max")])
    return g.select(["patient_id", "pred", "n_sum", "max_conf_max"]).rename_columns(_PATIENT_COLS)
