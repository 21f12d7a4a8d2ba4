"""Per-volume results: a diagnosis is made per eye per visit, not per B-scan.

One row per volume of a results table:

* a DICOM series (``series_uid``), however many files it spans;
* a multi-page TIFF stack (its ``path``);
* for JPEG archives, a Kermany ``patient_id`` (the scans of one patient named CLASS-PID-N.jpeg);
* any other file is a volume of its own.

The aggregation rule (``VolumeRule``, documented in README "Per-volume table"):
a class is *found* in a volume when at least ``min_frames`` of its readable frames are predicted as
that class with confidence >= ``min_prob``. The volume's ``worst`` finding is the found class of the
most urgent referral level (urgent > routine > observation); among classes of one level, the one
found in more frames, then the one with the higher maximum probability. ``referral`` is that
class's level; with no class found the volume is ``observation`` (the observation class, NORMAL,
is its worst finding); a volume with no readable frame has no referral. Default levels follow
Kermany et al. 2018: CNV and DME urgent, DRUSEN routine, NORMAL observation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import OctbatchError
from .results import META_KEY, atomic_write_parquet, prob_column, read_metadata

__all__ = ["VolumeRule", "REFERRAL_LEVELS", "DEFAULT_REFERRAL", "volume_table", "write_volumes"]

REFERRAL_LEVELS = ("urgent", "routine", "observation")
DEFAULT_REFERRAL = {"CNV": "urgent", "DME": "urgent", "DRUSEN": "routine", "NORMAL": "observation"}


@dataclass(frozen=True)
class VolumeRule:
    referral: dict = field(default_factory=lambda: dict(DEFAULT_REFERRAL))  # class -> level
    min_frames: int = 1
    min_prob: float = 0.0

    @classmethod
    def from_options(
        cls, classes: Sequence[str], *, referral: Sequence[str] = (), min_frames: int = 1, min_prob: float = 0.0
    ) -> VolumeRule:
        """Defaults for the classes it knows, overridden by CLASS=LEVEL items; every class must get a level."""
        from .config import parse_referral

        levels = {c: DEFAULT_REFERRAL[c] for c in classes if c in DEFAULT_REFERRAL}
        for item in parse_referral(referral):  # checks each is CLASS=LEVEL
            name, _, level = item.partition("=")
            levels[name] = level
        missing = [c for c in classes if c not in levels]
        if missing:
            raise OctbatchError(
                f"no referral level for class(es) {', '.join(missing)}",
                f"Give one with --referral CLASS=LEVEL (levels: {', '.join(REFERRAL_LEVELS)}).",
            )
        if min_frames < 1:
            raise OctbatchError("--min-frames must be at least 1", "A finding needs at least one frame.")
        if not 0.0 <= min_prob <= 1.0:
            raise OctbatchError(f"--min-prob {min_prob} is not between 0 and 1", "Give a probability, e.g. 0.5.")
        return cls({c: levels[c] for c in classes}, int(min_frames), float(min_prob))

    def to_dict(self) -> dict:
        return {
            "referral": self.referral,
            "min_frames": self.min_frames,
            "min_prob": self.min_prob,
            "rule": "worst class with >= min_frames frames predicted at confidence >= min_prob; levels urgent > routine > observation",
        }


_FIRST = ("patient_id", "study_uid", "series_uid", "laterality", "manufacturer", "model_name")


def volume_table(results: str, rule: VolumeRule | None = None, **rule_options) -> pa.Table:
    """The per-volume table of a results file (read whole: one row per frame is small). Without
    `rule`, VolumeRule.from_options(the table's classes, **rule_options)."""
    md, t, classes = _read_results(results)
    rule = rule or VolumeRule.from_options(classes, **rule_options)
    col: dict[str, list[Any]] = {
        n: (t.column(n).to_pylist() if n in t.column_names else [None] * t.num_rows)
        for n in ("path", "frame", "series_uid", "patient_id", "pred", "confidence", "status", "acquired_at", *_FIRST)
    }
    probs = (
        np.stack([t.column(prob_column(c)).to_numpy(zero_copy_only=False).astype(np.float64) for c in classes], axis=1)
        if t.num_rows
        else np.zeros((0, len(classes)))
    )
    out: dict[str, list] = {k: [] for k in _COLUMNS}
    # per class: frames predicted as it, and its max and mean probability
    per_class: dict[str, dict[str, list]] = {c: {"n": [], "pmax": [], "pmean": []} for c in classes}
    for (kind, vid), rows in sorted(_group_rows(col, t.num_rows).items()):
        _add_volume(out, per_class, kind, vid, rows, col, probs, classes, rule)
    fields = _fields(classes)
    meta = {
        "source": os.path.basename(results),
        "classes": classes,
        "volume_rule": rule.to_dict(),
        "phi": md.get("phi"),
        "model_sha256": md.get("model_sha256"),
        "octbatch_version": md.get("octbatch_version"),
    }
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(meta, sort_keys=True).encode()})
    data = {
        **out,
        **{f"n_{c}": per_class[c]["n"] for c in classes},
        **{f"pmax_{c}": per_class[c]["pmax"] for c in classes},
        **{f"pmean_{c}": per_class[c]["pmean"] for c in classes},
    }
    return pa.Table.from_pydict({f.name: data[f.name] for f in fields}, schema=schema)


_COLUMNS = (
    "volume_id",
    "kind",
    "first_path",
    "n_files",
    "n_frames",
    "n_ok",
    "n_error",
    "n_abnormal",
    "worst",
    "referral",
    "acquired_at",
    *_FIRST,
)


def _read_results(results: str) -> tuple[dict, pa.Table, list[str]]:
    """(metadata, table, classes) of a results file, or the error saying why it is not one."""
    if not os.path.exists(results):
        raise OctbatchError(f"results file {results} does not exist", "Give a table written by octbatch run.")
    try:
        md = read_metadata(results)
        t = pq.read_table(results)
    except Exception as exc:  # noqa: BLE001 - not Parquet
        raise OctbatchError(
            f"{results} is not a readable Parquet file: {exc}", "Give a table written by octbatch run."
        ) from None
    classes = list(md.get("classes") or [n[2:] for n in t.column_names if n.startswith("p_")])
    if not classes or "pred" not in t.column_names:
        raise OctbatchError(f"{results} is not an octbatch results table", "Give a table written by octbatch run.")
    return md, t, classes


def _group_rows(col: dict[str, list[Any]], n: int) -> dict[tuple[str, Any], list[int]]:
    """(kind, volume id) -> the rows of that volume: DICOM series, TIFF stack, Kermany patient, or file."""
    groups: dict[tuple[str, Any], list[int]] = {}
    for i in range(n):
        if col["series_uid"][i]:
            key = ("dicom_series", col["series_uid"][i])
        elif col["frame"][i] is not None:
            key = ("tiff", col["path"][i])
        elif col["patient_id"][i] and not col["series_uid"][i]:
            key = ("patient", col["patient_id"][i])
        else:
            key = ("file", col["path"][i])
        groups.setdefault(key, []).append(i)
    return groups


def _worst(
    classes: list[str], rule: VolumeRule, strong: dict[str, int], p: np.ndarray
) -> tuple[str | None, str | None]:
    """(worst finding, referral) of a volume with readable frames (see the module docstring)."""
    order = {lvl: k for k, lvl in enumerate(REFERRAL_LEVELS)}
    found = [c for c in classes if strong[c] >= rule.min_frames]
    if found:
        worst = min(found, key=lambda c: (order[rule.referral[c]], -strong[c], -float(p[:, classes.index(c)].max())))
        return worst, rule.referral[worst]
    obs = [c for c in classes if rule.referral[c] == "observation"]
    return (obs[0] if obs else None), "observation"


def _add_volume(out: dict[str, list], per_class, kind: str, vid: Any, rows: list[int], col, probs, classes, rule):
    """Append one volume's row to the columns in `out` and `per_class`."""
    ok = [i for i in rows if col["status"][i] == "ok"]
    preds = [col["pred"][i] for i in ok]
    conf = [col["confidence"][i] or 0.0 for i in ok]
    strong = {c: sum(1 for p, q in zip(preds, conf) if p == c and q >= rule.min_prob) for c in classes}
    p = probs[ok] if ok else np.zeros((0, len(classes)))
    worst, referral = _worst(classes, rule, strong, p) if ok else (None, None)
    out["volume_id"].append(vid)
    out["kind"].append(kind)
    out["first_path"].append(min(col["path"][i] for i in rows))
    out["n_files"].append(len({col["path"][i] for i in rows}))
    out["n_frames"].append(len(rows))
    out["n_ok"].append(len(ok))
    out["n_error"].append(len(rows) - len(ok))
    out["n_abnormal"].append(sum(1 for x in preds if rule.referral.get(x) != "observation"))
    out["worst"].append(worst)
    out["referral"].append(referral)
    times = [col["acquired_at"][i] for i in rows if col["acquired_at"][i] is not None]
    out["acquired_at"].append(min(times) if times else None)
    for k in _FIRST:
        vals = [col[k][i] for i in rows if col[k][i] is not None]
        out[k].append(vals[0] if vals else None)
    for j, c in enumerate(classes):
        per_class[c]["pmax"].append(float(p[:, j].max()) if ok else None)
        per_class[c]["pmean"].append(float(p[:, j].mean()) if ok else None)
        per_class[c]["n"].append(sum(1 for x in preds if x == c))


def _fields(classes: list[str]) -> list[pa.Field]:
    return [
        pa.field("volume_id", pa.string(), nullable=False),
        pa.field("kind", pa.string()),
        pa.field("first_path", pa.string()),
        pa.field("n_files", pa.int32()),
        pa.field("n_frames", pa.int32()),
        pa.field("n_ok", pa.int32()),
        pa.field("n_error", pa.int32()),
        pa.field("n_abnormal", pa.int32()),
        pa.field("worst", pa.string()),
        pa.field("referral", pa.string()),
        *[pa.field(f"n_{c}", pa.int32()) for c in classes],
        *[pa.field(f"pmax_{c}", pa.float32()) for c in classes],
        *[pa.field(f"pmean_{c}", pa.float32()) for c in classes],
        pa.field("acquired_at", pa.timestamp("us")),
        *[pa.field(k, pa.string()) for k in _FIRST],
    ]


def write_volumes(results: str, out: str, rule: VolumeRule | None = None, **rule_options) -> int:
    """Write the per-volume table of `results` to `out` (atomically). Returns its rows."""
    if os.path.abspath(out) == os.path.abspath(results):
        raise OctbatchError(
            "the volumes table would overwrite the results table", "Give another file, e.g. --volumes volumes.parquet."
        )
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    t = volume_table(results, rule, **rule_options)
    return atomic_write_parquet(out, [t], t.schema)
