"""A readable summary of a results table: counts, errors, and accuracy where labels are known."""

from __future__ import annotations

from typing import Any

from .aggregate import Aggregate, aggregate

__all__ = ["summarize", "summary_dict", "render_text"]


GATED = ("suspect", "not_oct")  # statuses the OCT gate sets (octbatch.gate)


def summarize(path: str) -> dict:
    """The summary of the table at ``path`` as a JSON-ready dict (what `octbatch report --json` prints)."""
    return summary_dict(aggregate(path, details=False))


def gate_summary(path: str, statuses: dict, metadata: dict | None) -> dict:
    """The OCT gate's mode (table metadata) and the flagged files per reason; only flagged rows are read."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    by_reason: dict[str, list] = {}
    pf = pq.ParquetFile(path)
    if "gate_reason" in pf.schema_arrow.names and any(statuses.get(s) for s in GATED):
        for b in pf.iter_batches(columns=["path", "status", "gate_reason"], batch_size=65536):
            m = pc.is_in(b.column(1), value_set=pc.cast(pa.array(list(GATED)), b.column(1).type))
            sub = b.filter(m)
            for p_, r in zip(sub.column(0).to_pylist(), sub.column(2).to_pylist()):
                by_reason.setdefault(r or "flagged", []).append(p_)
    return {
        "mode": ((metadata or {}).get("gate") or {}).get("mode", "off"),
        "suspect": statuses.get("suspect", 0),
        "not_oct": statuses.get("not_oct", 0),
        "by_reason": {k: sorted(v) for k, v in by_reason.items()},
    }


def summary_dict(a: Aggregate) -> dict:
    errors: dict[str, int] = {}
    for (status, key), e in a.errors.items():
        if status in GATED:  # flagged by the OCT gate, not unreadable: listed in the gate section
            continue
        errors[key] = errors.get(key, 0) + e["count"]
    predicted = {c: a.predicted.get(c, 0) for c in a.classes}
    predicted.update({c: n for c, n in a.predicted.items() if c not in predicted})
    out: dict[str, Any] = {
        "path": a.path,
        "rows": a.rows,
        "ok": a.ok,
        "not_ok": a.rows - a.ok,
        "statuses": dict(sorted(a.statuses.items())),
        "errors": errors,
        "predicted": predicted,
        "classes": a.classes,
        "labelled": a.labelled,
    }
    out["gate"] = gate_summary(a.path, out["statuses"], a.metadata)
    out["not_ok"] -= out["gate"]["suspect"] + out["gate"]["not_oct"]
    if a.labelled:
        out["accuracy"] = a.accuracy
        out["confusion"] = {
            t: {p: int(a.confusion[i, j]) for j, p in enumerate(a.classes)} for i, t in enumerate(a.classes)
        }
        out["recall"] = {m["class"]: m["recall"] for m in a.per_class()}
        out["per_class"] = a.per_class()
        out["ece"] = a.ece
    return out


def render_text(s: dict, max_listed: int = 20) -> str:
    lines = [f"{s['path']}: {s['rows']} rows, {s['ok']} classified, {s['not_ok']} not readable"]
    other = {k: n for k, n in s.get("statuses", {}).items() if k not in ("ok", "error")}
    if other:
        lines[0] += " (" + ", ".join(f"{n} status={k}" for k, n in other.items()) + ")"
    lines.append("predicted: " + ", ".join(f"{c} {n}" for c, n in s["predicted"].items()))
    for k, n in sorted(s["errors"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  error x{n}: {k}")
    g = s.get("gate") or {}
    if g.get("by_reason"):
        lines.append(
            f"OCT gate ({g['mode']}): {g['suspect']} suspect, {g['not_oct']} not_oct (not counted as classified above)"
        )
        for reason, paths in sorted(g["by_reason"].items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {reason} x{len(paths)}:")
            lines += [f"    {p}" for p in paths[:max_listed]]
            if len(paths) > max_listed:
                lines.append(f"    ... and {len(paths) - max_listed} more (octbatch report --json lists them all)")
    if "accuracy" in s:
        lines.append(
            f"on {s['labelled']} scans whose name or folder gives the class: accuracy {s['accuracy']:.3f}"
            + (f", expected calibration error {s['ece']:.3f}" if s.get("ece") is not None else "")
        )
        w = max(len(c) for c in s["classes"]) + 2
        lines.append("true \\ pred".ljust(w + 4) + "".join(c.rjust(w) for c in s["classes"]) + "   recall")
        for a in s["classes"]:
            r = s["recall"][a]
            lines.append(
                a.ljust(w + 4)
                + "".join(str(s["confusion"][a][b]).rjust(w) for b in s["classes"])
                + (f"   {r:.3f}" if r is not None else "   -")
            )
        lines.append("(labels come from file names; this is a sanity check, not a clinical evaluation)")
    return "\n".join(lines)
