"""Per-patient referral levels, as in Kermany et al. 2018 (Cell 172:1122): urgent for CNV or DME,
routine for DRUSEN, observation for NORMAL. A patient's level is that of the worst finding over their scans.

This mirrors the paper's triage scheme to order a worklist; it is not a clinical decision.
"""

from __future__ import annotations

import csv
import io

from .files import write_text_atomic

__all__ = ["LEVELS", "SEVERITY", "referrals", "write_csv", "csv_text"]

LEVELS = ("urgent", "routine", "observation", "unmapped")
# worst first; CNV before DME (both urgent: active neovascularisation threatens sight fastest)
SEVERITY = {"CNV": 0, "DME": 1, "DRUSEN": 2, "NORMAL": 3}
_LEVEL_OF = {"CNV": "urgent", "DME": "urgent", "DRUSEN": "routine", "NORMAL": "observation"}


def referrals(patients, classes: list[str]) -> list[dict]:
    """One dict per patient from the (patient_id, pred, n, max_conf) table of aggregate(), urgent first.

    Within a level: more scans with findings of that level first (level_scans), then their highest confidence
    (level_confidence), then patient id. worst_finding is the most severe class seen (CNV before DME).
    Classes outside Kermany's four (a user's model) are counted but give the level "unmapped".
    Vectorised over the table's rows (one per patient and predicted class), so 100k patients take well under a second.
    """
    import numpy as np
    import pyarrow.compute as pc

    if patients is None or not patients.num_rows:
        return []
    enc = pc.dictionary_encode(patients.column("patient_id")).combine_chunks()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    ids = enc.dictionary.to_pylist()
    npat = len(ids)
    preds = patients.column("pred").to_pylist()  # one per (patient, class): small next to the scans
    n = patients.column("n").to_numpy(zero_copy_only=False).astype(np.int64)
    conf = np.nan_to_num(patients.column("max_conf").to_numpy(zero_copy_only=False).astype(np.float64))
    names = sorted(set(preds))
    # worst-first key of a class: Kermany's order, then any other class by name
    key_of = {c: (SEVERITY[c] if c in SEVERITY else len(SEVERITY) + i) for i, c in enumerate(names)}
    class_of_key = {v: c for c, v in key_of.items()}
    key = np.array([key_of[c] for c in preds], np.int64)
    lvl = np.array([LEVELS.index(_LEVEL_OF.get(c, "unmapped")) for c in preds], np.int64)
    worst = np.full(npat, np.iinfo(np.int64).max)
    np.minimum.at(worst, codes, key)
    plevel = np.full(npat, len(LEVELS))
    np.minimum.at(plevel, codes, lvl)
    at = lvl == plevel[codes]
    level_scans = np.bincount(codes[at], weights=n[at], minlength=npat).astype(np.int64)
    level_conf = np.zeros(npat)
    np.maximum.at(level_conf, codes[at], conf[at])
    scans = np.bincount(codes, weights=n, minlength=npat).astype(np.int64)
    per_class = {}
    pred_arr = np.array(preds, dtype=object)
    for c in classes:
        m = pred_arr == c
        per_class[f"n_{c}"] = np.bincount(codes[m], weights=n[m], minlength=npat).astype(np.int64).tolist()
    level_conf = np.round(level_conf, 4)
    order = np.lexsort((np.array(ids, dtype=object).astype(str), -level_conf, -level_scans, plevel))
    cols = {"patient_id": ids, "referral": [LEVELS[v] for v in plevel], "worst_finding": [class_of_key[v] for v in worst],
            "level_scans": level_scans.tolist(), "level_confidence": level_conf.tolist(), "scans": scans.tolist(), **per_class}
    return [{k: v[i] for k, v in cols.items()} for i in order.tolist()]


def _cell(v):
    # A spreadsheet runs a cell that starts with = + - @ as a formula; patient ids may come from untrusted tags.
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def csv_text(rows: list[dict], classes: list[str]) -> str:
    cols = ["patient_id", "referral", "worst_finding", "level_scans", "level_confidence", "scans", *(f"n_{c}" for c in classes)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in cols])
    return buf.getvalue()


def write_csv(path: str, rows: list[dict], classes: list[str]) -> str:
    write_text_atomic(path, csv_text(rows, classes))
    return path
