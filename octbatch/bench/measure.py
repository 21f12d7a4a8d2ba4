"""The one timer of octbatch's measurements: warm-up calls, then timed repeats, summarised as median and spread.

`repeat_timed` is the loop; `measure_rate` (items/s of each repeat) and the per-call timings of
octbatch.training.evaluate.benchmark_onnx are built on it. `row` packages a summary as a results row.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from ..timing import repeat_timed

__all__ = ["combined_ceiling", "efficiency", "measure_rate", "repeat_timed", "row", "summarize"]


def summarize(samples: Sequence[float]) -> dict:
    """Median and spread of repeated measurements (min/max and the quartiles)."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("summarize() needs at least one sample")
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {
        "median": statistics.median(xs),
        "min": xs[0],
        "max": xs[-1],
        "q1": q1,
        "q3": q3,
        "n": len(xs),
        "samples": xs,
    }


def measure_rate(fn: Callable[[], int], *, min_seconds: float = 1.0, repeats: int = 3, warmup: int = 1) -> dict:
    """Call fn (which returns how many items it processed) until min_seconds pass, `repeats` times,
    after `warmup` untimed calls. Returns summarize() of the items/s of each repeat."""
    return summarize(
        [items / dt for items, dt in repeat_timed(fn, min_seconds=min_seconds, repeats=repeats, warmup=warmup)]
    )


def combined_ceiling(decode: float, infer: float, *, shared_cores: bool = True) -> float:
    """The best an overlapped pipeline can do given two stage ceilings (items/s).

    On a CPU, decode and inference compete for the same cores (each ceiling measured with all of
    them), so their per-item costs add: 1/(1/decode + 1/infer). On a GPU they run on different
    hardware and the slower stage bounds the flow: min(decode, infer).
    """
    if decode <= 0 or infer <= 0:
        return 0.0
    return 1.0 / (1.0 / decode + 1.0 / infer) if shared_cores else min(decode, infer)


def efficiency(measured: float, ceiling: float) -> float | None:
    """measured / ceiling, or None without a ceiling."""
    return measured / ceiling if ceiling > 0 else None


def row(kind: str, name: str, stats: dict | None, unit: str, ctx: dict, **extra) -> dict:
    """One results row: what was measured, its summary (when there is one), the machine and versions."""
    out = {"kind": kind, "name": name, "unit": unit, **extra}
    if stats is not None:
        out.update({k: stats[k] for k in ("median", "min", "max", "q1", "q3", "n", "samples")})
    out["machine"] = ctx["machine"]["host"]
    out["versions"] = ctx["versions"]
    return out
