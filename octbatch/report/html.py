"""The HTML report: one self-contained file (pictures inline as data URIs, no script, no network).

Rendered from a Jinja2 template shipped in the package, with autoescaping on: file names, error messages
and patient ids come from an archive and are untrusted text.
"""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime

from .._deps import require
from .aggregate import Aggregate, aggregate
from .files import write_text_atomic
from .referral import LEVELS, referral_table, write_csv
from .thumbs import archive_root, thumbnail

__all__ = ["write_html", "render_html", "pictures", "write_pngs", "environment", "DISCLAIMER"]

DISCLAIMER = (
    "Not a medical device. octbatch and its shipped model are research software: the model is a small demonstration "
    "trained on a public sample of scans. Nothing in this report is a diagnosis or a referral decision; a clinician "
    "must read the scans."
)


def environment():
    """The Jinja2 environment of octbatch's templates (autoescape on for every template)."""
    jinja2 = require("jinja2", purpose="the HTML report")
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("octbatch.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda x, d=1: "–" if x is None else f"{100 * x:.{d}f}%"
    env.filters["num"] = lambda x, d=3: "–" if x is None else (f"{x:,}" if isinstance(x, int) else f"{x:.{d}f}")
    return env


def pictures(a: Aggregate) -> dict[str, str]:
    """The report's charts as PNG data URIs: predicted, confidence, and with labels confusion, reliability."""
    from . import charts

    out = {}
    if a.ok:
        out["predicted"] = charts.predicted_bars({**{c: a.predicted.get(c, 0) for c in a.classes}, **a.predicted})
    if a.conf_hist.sum():
        out["confidence"] = charts.confidence_histograms(a.classes, a.conf_hist)
    if a.labelled:
        out["confusion"] = charts.confusion_matrices(a.classes, a.confusion)
        ece = a.ece
        assert ece is not None  # labelled rows fill the reliability bins
        out["reliability"] = charts.reliability_diagram(a.reliability(), ece)
    return out


def write_pngs(pics: dict[str, str], folder: str) -> list[str]:
    """The charts as PNG files too (for slides and papers): folder/<name>.png."""
    from ..errors import OctbatchError

    try:
        os.makedirs(folder, exist_ok=True)
        paths = []
        for name, uri in pics.items():
            p = os.path.join(folder, f"{name}.png")
            with open(p, "wb") as f:
                f.write(base64.b64decode(uri.split(",", 1)[1]))
            paths.append(p)
        return paths
    except OSError as exc:
        raise OctbatchError(
            f"cannot write the charts to {folder}: {exc.strerror or exc}", "Give a folder you can write to."
        ) from None


def render_html(
    a: Aggregate,
    *,
    archive: str | None = None,
    top: int = 20,
    referrals=None,
    referrals_csv: str | None = None,
    pics: dict[str, str] | None = None,
) -> str:
    """The report page of aggregate ``a``; ``referrals``, ``pics``: its referral_table() and pictures() when
    already computed."""
    md = a.metadata
    known = {"ok", "error", "failed"}
    counts = {
        "files": a.rows,
        "ok": a.ok,
        "unreadable": a.statuses.get("error", 0),
        "failed": a.statuses.get("failed", 0),
        "other": {k: n for k, n in sorted(a.statuses.items()) if k not in known},
    }
    pics = pictures(a) if pics is None else pics
    quality = _quality(a) if a.labelled else None
    root, root_note = archive_root(archive, md)
    samples = _sample_sections(a, root, top)
    ref = referrals if referrals is not None else referral_table(a.patients, a.classes)
    counted = {v["values"]: v["counts"] for v in pc_value_counts(ref.column("referral"))}
    levels = {lv: counted.get(lv, 0) for lv in LEVELS}
    ctx = {
        "title": f"octbatch report: {os.path.basename(a.path)}",
        "results": os.path.abspath(a.path),
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "provenance": _provenance(a),
        "counts": counts,
        "statuses": sorted(a.statuses.items(), key=lambda kv: -kv[1]),
        "pictures": {k: pics.get(k) for k in ("predicted", "confidence", "confusion", "reliability")},
        "quality": quality,
        "has_labels": a.has_labels,
        "samples": samples,
        "thumb_note": root_note,
        "patients": {
            "known": a.patients is not None,
            "total": ref.num_rows,
            "levels": {k: v for k, v in levels.items() if v},
            "rows": ref.slice(0, top).to_pylist(),
            "classes": a.classes,
            "csv": referrals_csv,
        },
        "errors": sorted(
            ({"status": st, "key": k, **e} for (st, k), e in a.errors.items()), key=lambda e: (-e["count"], e["key"])
        ),
        "disclaimer": DISCLAIMER,
        "model_card": str(md.get("model_card") or ""),
    }
    return environment().get_template("report.html.j2").render(**ctx)


def _quality(a: Aggregate) -> dict:
    """The labelled rows' section: accuracy, calibration, per-class metrics and the confusion matrix."""
    return {
        "labelled": a.labelled,
        "accuracy": a.accuracy,
        "ece": a.ece,
        "per_class": a.per_class(),
        "reliability": a.reliability(),
        "classes": a.classes,
        "confusion": [[int(v) for v in row] for row in a.confusion],
    }


def pc_value_counts(arr) -> list[dict]:
    import pyarrow.compute as pc

    return pc.value_counts(arr).to_pylist() if len(arr) else []


def _provenance(a: Aggregate) -> list[tuple[str, str]]:
    md = a.metadata

    def col(name):
        vals = a.provenance.get(name) or {}
        if not vals:
            return None
        if len(vals) == 1:
            return next(iter(vals))
        return ", ".join(f"{v} ({n:,} rows)" for v, n in sorted(vals.items(), key=lambda kv: -kv[1]))

    # the columns first: a table resumed or merged over several runs says which rows came from which
    items = [
        ("model", md.get("model_path")),
        ("model sha256", col("model_sha256") or md.get("model_sha256")),
        ("classes", ", ".join(a.classes)),
        ("backend", col("backend")),
        ("precision", col("precision")),
        ("decoder", col("decoder")),
        ("run id", col("run_id") or md.get("run_id")),
        ("octbatch version", md.get("octbatch_version")),
        ("archive root", md.get("archive_root")),
        ("table written", md.get("written_at")),
    ]
    if md.get("merged_slices"):
        items.append(("merged slices", str(md["merged_slices"])))
    return [(k, str(v)) for k, v in items if v not in (None, "")]


def _sample_sections(a: Aggregate, root: str | None, top: int) -> list[dict]:
    cache: dict[str, tuple[str | None, str]] = {}

    def items(t, limit):
        if t is None:
            return []
        out = []
        cols = {c: t.column(c).to_pylist() for c in t.column_names}
        for i in range(min(limit, t.num_rows)):
            path = cols["path"][i]
            if root is not None and path not in cache:
                cache[path] = thumbnail(root, path)
            uri, why = cache.get(path, (None, ""))
            label = cols.get("label", [None] * t.num_rows)[i]
            pred = cols["pred"][i]
            out.append(
                {
                    "path": path,
                    "pred": pred,
                    "label": label,
                    "confidence": cols["confidence"][i],
                    "uri": uri,
                    "why": why,
                    "wrong": label is not None and label in a.classes and label != pred,
                }
            )
        return out

    sections = []
    per_class = [it for c in a.classes for it in items(a.samples.get(f"class:{c}"), 4)]
    if per_class:
        sections.append({"title": "Most confident scans of each predicted class", "items": per_class})
    if a.has_labels and a.labelled:
        sections.append(
            {
                "title": "Most confident mistakes (the name or folder gives another class)",
                "items": items(a.samples.get("mistakes"), top),
                "empty": "No mistakes among the labelled scans.",
            }
        )
    unsure = items(a.samples.get("unsure"), top)
    if unsure:
        sections.append({"title": "Least confident predictions", "items": unsure})
    return sections


def write_html(
    results: str,
    out: str,
    *,
    archive: str | None = None,
    top: int = 20,
    referrals_csv: str | None = None,
    png_dir: str | None = None,
) -> dict:
    """Aggregate ``results`` and write the HTML report to ``out`` (and the referral CSV, the chart PNGs when asked).

    Returns {"html": out, "referrals": csv path or None, "pngs": [paths], "patients": n, "aggregate": Aggregate}.
    """
    if top < 1:
        from ..errors import OctbatchError

        raise OctbatchError("--top must be at least 1", "e.g. --top 20")
    require("jinja2", purpose="the HTML report")
    require("matplotlib", purpose="the pictures of the HTML report")
    a = aggregate(results, top=top)
    ref = referral_table(a.patients, a.classes)
    if referrals_csv:
        write_csv(referrals_csv, ref, a.classes)
    pics = pictures(a)
    pngs = write_pngs(pics, png_dir) if png_dir else []
    write_text_atomic(
        out, render_html(a, archive=archive, top=top, referrals=ref, referrals_csv=referrals_csv, pics=pics)
    )
    return {"html": out, "referrals": referrals_csv, "pngs": pngs, "patients": ref.num_rows, "aggregate": a}
