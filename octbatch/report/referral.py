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
    """
    if patients is None or not patients.num_rows:
        return []
    per: dict[str, dict] = {}
    for pid, pred, n, conf in zip(*(patients.column(c).to_pylist() for c in ("patient_id", "pred", "n", "max_conf"))):
        p = per.setdefault(pid, {"patient_id": pid, "scans": 0, "counts": {}, "max_conf": {}})
        p["scans"] += n
        p["counts"][pred] = p["counts"].get(pred, 0) + n
        p["max_conf"][pred] = max(p["max_conf"].get(pred, 0.0), conf or 0.0)
    out = []
    for p in per.values():
        worst = min(p["counts"], key=lambda c: (SEVERITY.get(c, len(SEVERITY)), c))
        level = _LEVEL_OF.get(worst, "unmapped")
        at_level = [c for c in p["counts"] if _LEVEL_OF.get(c, "unmapped") == level]
        out.append({"patient_id": p["patient_id"], "referral": level, "worst_finding": worst,
                    "level_scans": sum(p["counts"][c] for c in at_level),
                    "level_confidence": round(max(p["max_conf"][c] for c in at_level), 4), "scans": p["scans"],
                    **{f"n_{c}": p["counts"].get(c, 0) for c in classes}})
    out.sort(key=lambda r: (LEVELS.index(r["referral"]), -r["level_scans"], -r["level_confidence"], r["patient_id"]))
    return out


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
