"""Training data: the labelled scans of a folder (manifest.csv or discovery + Kermany names) and their
patient-wise split.

Rules the split follows (see engines/README.md):

* rows whose manifest ``split_hint`` is ``test`` or ``val`` are *report-only*: never trained on, never
  used to pick an epoch or tune anything; the patients they come from are left out of training too,
  and so is any other scan that is a near-duplicate of one of them (same pixels after preprocessing);
* the remaining scans with a patient id are split patient-wise into train and validation (a patient
  id never sits on both sides, across classes too); scans without a patient id (renamed copies)
  can only go to training, and are dropped where they near-duplicate a validation scan;
* DME and DRUSEN are scarce, so training draws class-balanced batches (octbatch.training.loop).
"""

from __future__ import annotations

import csv
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..archive import CLASS_NAMES, discover
from ..errors import OctbatchError

__all__ = ["REPORT_HINTS", "REPORT_SETS", "Record", "load_records", "split_records"]

# Report-only manifest hints: never trained on, never used to select or tune anything.
# test-v3 is Kermany's official 1,000-scan test set; test/val are the Kaggle copy's splits.
REPORT_HINTS = ("test-v3", "test", "val")


# The sets evaluated once, at the end, on the exported model (name -> split hints).
REPORT_SETS = {"test_v3": ("test-v3",), "test_val": ("test", "val")}


@dataclass
class Record:
    path: str  # absolute path
    rel: str  # relative to the data folder
    label: str
    patient_id: str  # "" when unknown
    split_hint: str = "unknown"
    width: int = 0
    height: int = 0
    sha256: str = ""
    role: str = ""  # train | val | report | excluded (set by split_records)
    why: str = ""  # why a record was excluded


def load_records(data_dir: str | os.PathLike) -> list[Record]:
    """Every labelled scan under ``data_dir``: from ``manifest.csv`` when present, else discovery."""
    root = Path(data_dir)
    if not root.is_dir():
        raise OctbatchError(
            f"training data {root} is not a directory",
            "Give the folder that holds the class folders (e.g. CNV/, DME/, ...).",
        )
    manifest = root / "manifest.csv"
    records: list[Record] = []
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                label = (row.get("label") or "").strip()
                if label not in CLASS_NAMES:
                    continue
                rel = row["path"]
                records.append(
                    Record(
                        path=str(root / rel),
                        rel=rel,
                        label=label,
                        patient_id=(row.get("patient_id") or "").strip(),
                        split_hint=(row.get("split_hint") or "unknown").strip() or "unknown",
                        width=int(row.get("width") or 0),
                        height=int(row.get("height") or 0),
                        sha256=row.get("sha256") or "",
                    )
                )
    else:
        for e in discover(root):
            if e.label is None:
                continue
            hint = "unknown"
            # A Kaggle-style layout (test/CNV/..., val/CNV/...) marks report-only scans by folder.
            top = e.path.split("/", 1)[0].lower()
            if top in REPORT_HINTS and "/" in e.path:
                hint = top
            records.append(
                Record(path=e.abspath, rel=e.path, label=e.label, patient_id=e.patient_id or "", split_hint=hint)
            )
    if not records:
        raise OctbatchError(
            f"no labelled scans found under {root}",
            "Name scans like CNV-1016042-1.jpeg or put them in class folders CNV/, DME/, DRUSEN/, NORMAL/.",
        )
    return records


def _dup_features(images: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm 32x32 thumbnails: their dot product is a near-duplicate score."""
    import cv2

    f = np.stack([cv2.resize(im, (32, 32), interpolation=cv2.INTER_AREA) for im in images]).reshape(len(images), -1)
    f = f.astype(np.float32)
    f -= f.mean(axis=1, keepdims=True)
    f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-6
    return f


def _max_similarity(feats: np.ndarray, rows: np.ndarray, against: np.ndarray) -> np.ndarray:
    if len(rows) == 0 or len(against) == 0:
        return np.full(len(rows), -1.0, np.float32)
    return (feats[rows] @ feats[against].T).max(axis=1)


def split_records(
    records: Sequence[Record],
    *,
    val_fraction: float = 0.25,
    seed: int = 0,
    images: np.ndarray | None = None,
    near_dup: float = 0.97,
) -> dict:
    """Assign each record a role (train/val/report/excluded), in place; returns a summary.

    Patients are grouped by id across classes and drawn for validation per class, rarest class
    first, until each class has about ``val_fraction`` of its scans that carry a patient id.
    """
    rng = np.random.default_rng(seed)
    report_patients = {r.patient_id for r in records if r.split_hint in REPORT_HINTS and r.patient_id}
    for r in records:
        r.role, r.why = "", ""
        if r.split_hint in REPORT_HINTS:
            r.role = "report"
        elif r.patient_id and r.patient_id in report_patients:
            r.role, r.why = "excluded", "patient also in the report-only set"
    val_patients = _draw_val_patients(records, val_fraction, rng)
    for r in records:
        if not r.role:
            r.role = "val" if r.patient_id in val_patients else "train"
    n_dups = _exclude_near_duplicates(records, images, near_dup) if images is not None and near_dup < 1.0 else 0
    counts = {
        role: dict(sorted(Counter(r.label for r in records if r.role == role).items()))
        for role in ("train", "val", "report", "excluded")
    }
    return {
        "counts": counts,
        "val_patients": len(val_patients),
        "train_patients": len({r.patient_id for r in records if r.role == "train" and r.patient_id}),
        "report_patients": len(report_patients),
        "excluded_report_patient_scans": sum(r.why.startswith("patient") for r in records),
        "excluded_near_duplicates": n_dups,
        "train_without_patient_id": sum(1 for r in records if r.role == "train" and not r.patient_id),
    }


def _draw_val_patients(records: Sequence[Record], val_fraction: float, rng: np.random.Generator) -> set[str]:
    """The validation patients: per class, rarest class first, until each class has about
    ``val_fraction`` of its scans that carry a patient id."""
    by_patient: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if not r.role and r.patient_id:
            by_patient[r.patient_id].append(r)
    class_n = Counter(r.label for r in records if not r.role)
    rank = {c: i for i, c in enumerate(sorted(CLASS_NAMES, key=lambda c: (class_n.get(c, 0), c)))}
    with_pid = Counter(r.label for rs in by_patient.values() for r in rs)
    target = {c: val_fraction * with_pid.get(c, 0) for c in CLASS_NAMES}
    in_val: Counter[str] = Counter()
    # Each patient is filed under the rarest class among its scans; rarest classes are drawn first.
    groups: dict[str, list[str]] = defaultdict(list)
    for pid, rs in by_patient.items():
        groups[min((r.label for r in rs), key=lambda c: rank[c])].append(pid)
    val_patients: set[str] = set()
    for c in sorted(groups, key=lambda c: rank[c]):
        pids = sorted(groups[c])
        rng.shuffle(pids)
        for pid in pids:
            if in_val[c] + 0.5 * sum(r.label == c for r in by_patient[pid]) > target[c]:
                continue
            val_patients.add(pid)
            for r in by_patient[pid]:
                in_val[r.label] += 1
    return val_patients


def _exclude_near_duplicates(records: Sequence[Record], images: np.ndarray, near_dup: float) -> int:
    """Training-side scans whose pixels near-duplicate a validation or report-only scan become excluded."""
    # Renamed copies and re-encoded scans escape the id rules; their pixels do not.
    feats = _dup_features(images)
    roles = np.array([r.role for r in records])
    held = np.flatnonzero((roles == "report") | (roles == "val"))
    cand = np.flatnonzero(roles == "train")
    sim = _max_similarity(feats, cand, held)
    n_dups = 0
    for i, s in zip(cand.tolist(), sim):
        if s > near_dup:
            records[i].role, records[i].why = "excluded", f"near-duplicate of a held-out scan (similarity {s:.3f})"
            n_dups += 1
    return n_dups
