"""Per-patient referral levels, as in Kermany et al. 2018 (Cell 172:1122): urgent for CNV or DME,
routine for DRUSEN, observation for NORMAL. A patient's level is that of the worst finding over their scans.

This mirrors the paper's triage scheme to order a worklist; it is not a clinical decision.
"""

from __future__ import annotations

from .files import write_text_atomic

__all__ = ["LEVELS", "SEVERITY", "referrals", "referral_table", "write_csv", "csv_text"]

LEVELS = ("urgent", "routine", "observation", "unmapped")
# worst first; CNV before DME (both urgent: active neovascularisation threatens sight fastest)
SEVERITY = {"CNV": 0, "DME": 1, "DRUSEN": 2, "NORMAL": 3}
_LEVEL_OF = {"CNV": "urgent", "DME": "urgent", "DRUSEN": "routine", "NORMAL": "observation"}


def referrals(patients, classes: list[str]) -> list[dict]:
    """referral_table() as one dict per patient."""
    return referral_table(patients, classes).to_pylist()


def referral_table(patients, classes: list[str]):
    """One row per patient from the (patient_id, pred, n, max_conf) table of aggregate(), urgent first.

    Within a level: more scans with findings of that level first (level_scans), then their highest confidence
    (level_confidence), then patient id. worst_finding is the most severe class seen (CNV before DME).
    Classes outside Kermany's four (a user's model) are counted but give the level "unmapped".
    Vectorised over the table's rows (one per patient and predicted class), so 100k patients take well under a second.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if patients is None or not patients.num_rows:
        return pa.table(
            {
                c: pa.array([], pa.float64() if c == "level_confidence" else pa.int64() if i > 2 else pa.string())
                for i, c in enumerate(_columns(classes))
            }
        )
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
        per_class[f"n_{c}"] = np.bincount(codes[m], weights=n[m], minlength=npat).astype(np.int64)
    level_conf = np.round(level_conf, 4)
    order = np.lexsort((np.array(ids, dtype=object).astype(str), -level_conf, -level_scans, plevel))
    t = pa.table(
        {
            "patient_id": enc.dictionary,
            "referral": pa.array([LEVELS[v] for v in plevel], pa.string()),
            "worst_finding": pa.array([class_of_key[v] for v in worst], pa.string()),
            "level_scans": level_scans,
            "level_confidence": level_conf,
            "scans": scans,
            **{k: np.asarray(v, np.int64) for k, v in per_class.items()},
        }
    )
    return t.take(pa.array(order))


def _columns(classes):
    return [
        "patient_id",
        "referral",
        "worst_finding",
        "level_scans",
        "level_confidence",
        "scans",
        *(f"n_{c}" for c in classes),
    ]


def csv_text(table, classes: list[str]) -> str:
    """The referral table (or its list of dicts) as CSV text. A patient id that starts with = + - @ (a formula
    to a spreadsheet; ids may come from untrusted tags) gets a leading '."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    if isinstance(table, list):
        table = pa.Table.from_pylist(table) if table else referral_table(None, classes)
    table = table.select(_columns(classes))
    ids = table.column("patient_id").cast(pa.string())
    risky = pc.fill_null(pc.match_substring_regex(ids, pattern=r"^[=+\-@\t\r]"), False)
    table = table.set_column(0, "patient_id", pc.if_else(risky, pc.binary_join_element_wise("'", ids, ""), ids))
    buf = pa.BufferOutputStream()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(quoting_style="needed"))
    return buf.getvalue().to_pybytes().decode("utf-8").replace("\r\n", "\n")


def write_csv(path: str, table, classes: list[str]) -> str:
    write_text_atomic(path, csv_text(table, classes))
    return path
