"""A readable summary of a results table: counts, errors, and accuracy where labels are known."""

from __future__ import annotations

import os

from .errors import OctbatchError

__all__ = ["summarize", "render_text"]


def summarize(path: str) -> dict:
    import pyarrow.parquet as pq

    from .results import read_metadata

    if not os.path.exists(path):
        raise OctbatchError(f"results file {path} does not exist", "Run octbatch run ... --out PATH first.")
    try:
        names = set(pq.read_schema(path).names)
        t = pq.read_table(path, columns=["path", "label", "pred", "status", "error"] + [c for c in ("gate_reason",) if c in names])
    except Exception as exc:  # noqa: BLE001
        raise OctbatchError(f"{path} is not an octbatch results table ({exc})", "Give the file written by octbatch run --out.") from None
    md = read_metadata(path)
    classes = md.get("classes") or sorted({p for p in t.column("pred").to_pylist() if p})
    rows = t.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    gated = [r for r in rows if r["status"] in ("suspect", "not_oct")]
    errors: dict[str, int] = {}
    for r in rows:
        if r["status"] not in ("ok", "suspect", "not_oct"):
            key = (r["error"] or "").split(":")[0].split("(")[0].strip()[:80]
            errors[key] = errors.get(key, 0) + 1
    pred_counts = {c: 0 for c in classes}
    for r in ok:
        pred_counts[r["pred"]] = pred_counts.get(r["pred"], 0) + 1
    labelled = [r for r in ok if r["label"] in classes]
    by_reason: dict[str, list] = {}
    for r in gated:
        by_reason.setdefault(r.get("gate_reason") or "flagged", []).append(r["path"])
    out = {"path": path, "rows": len(rows), "ok": len(ok), "not_ok": len(rows) - len(ok) - len(gated), "errors": errors,
           "predicted": pred_counts, "classes": classes, "labelled": len(labelled),
           "gate": {"mode": (md.get("gate") or {}).get("mode", "off"), "suspect": sum(r["status"] == "suspect" for r in gated),
                    "not_oct": sum(r["status"] == "not_oct" for r in gated), "by_reason": {k: sorted(v) for k, v in by_reason.items()}}}
    if labelled:
        cm = {a: {b: 0 for b in classes} for a in classes}
        for r in labelled:
            cm[r["label"]][r["pred"]] += 1
        out["accuracy"] = sum(cm[c][c] for c in classes) / len(labelled)
        out["confusion"] = cm
        out["recall"] = {c: (cm[c][c] / s if (s := sum(cm[c].values())) else None) for c in classes}
    return out


def render_text(s: dict, max_listed: int = 20) -> str:
    lines = [f"{s['path']}: {s['rows']} rows, {s['ok']} classified, {s['not_ok']} not readable"]
    lines.append("predicted: " + ", ".join(f"{c} {n}" for c, n in s["predicted"].items()))
    for k, n in sorted(s["errors"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  error x{n}: {k}")
    g = s.get("gate") or {}
    if g.get("by_reason"):
        lines.append(f"OCT gate ({g['mode']}): {g['suspect']} suspect, {g['not_oct']} not_oct (not counted as classified above)")
        for reason, paths in sorted(g["by_reason"].items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {reason} x{len(paths)}:")
            lines += [f"    {p}" for p in paths[:max_listed]]
            if len(paths) > max_listed:
                lines.append(f"    ... and {len(paths) - max_listed} more (octbatch report --json lists them all)")
    if "accuracy" in s:
        lines.append(f"on {s['labelled']} scans whose name or folder gives the class: accuracy {s['accuracy']:.3f}")
        w = max(len(c) for c in s["classes"]) + 2
        lines.append("true \\ pred".ljust(w + 4) + "".join(c.rjust(w) for c in s["classes"]) + "   recall")
        for a in s["classes"]:
            r = s["recall"][a]
            lines.append(a.ljust(w + 4) + "".join(str(s["confusion"][a][b]).rjust(w) for b in s["classes"]) + (f"   {r:.3f}" if r is not None else "   -"))
        lines.append("(labels come from file names; this is a sanity check, not a clinical evaluation)")
    return "\n".join(lines)
