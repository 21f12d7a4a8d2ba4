"""What the measured rows imply: the combined ceiling, octbatch's efficiency against it, and the
ratios of octbatch to each baseline and of each experiment to octbatch."""

from __future__ import annotations

from .config import BenchConfig
from .measure import combined_ceiling, efficiency

__all__ = ["derive"]


def derive(rows: list[dict], cfg: BenchConfig, threads: int, gpu: bool) -> dict:
    """Ceilings, efficiencies and ratios computed from the measured rows."""

    def med(pred):
        r = next((r for r in rows if pred(r) and r.get("median") is not None), None)
        return r["median"] if r else None

    def best(name):  # the larger of the before/after measurements: never flatter the end-to-end run
        xs = [r["median"] for r in rows if r["kind"] == "ceiling" and r["name"] == name and r.get("median")]
        return max(xs) if xs else None

    chosen = "cpu"
    decode = best("decode") or med(
        lambda r: (
            r["kind"] == "stage"
            and r["name"] == "decode"
            and r.get("decoder") == chosen
            and r.get("threads") == threads
        )
    )
    infer = best("infer") or med(
        lambda r: r["kind"] == "stage" and r["name"] == "infer" and r.get("batch_size") == cfg.run_batch_size
    )
    d = {
        "decoder": chosen,
        "decode_ceiling": decode,
        "infer_ceiling": infer,
        "batch_size": cfg.run_batch_size,
        "threads": threads,
        "rule": "min(decode, infer)" if gpu else "1/(1/decode + 1/infer)",
        "ceiling_note": "decode and inference ceilings measured right before and right after the end-to-end runs; the larger of each is used",
    }
    d["combined_ceiling"] = combined_ceiling(decode, infer, shared_cores=not gpu) if decode and infer else None
    octb = med(lambda r: r["kind"] == "e2e" and r["name"] == "octbatch run (local)") or med(
        lambda r: r["kind"] == "e2e"
    )
    d["octbatch_img_s"] = octb
    d["efficiency"] = efficiency(octb, d["combined_ceiling"]) if octb and d["combined_ceiling"] else None
    d["ratios"] = {}  # octbatch / baseline, measured side by side
    d["experiments"] = {}  # variant / default octbatch run
    for r in rows:
        if r.get("median") and octb and r["kind"] == "baseline":
            d["ratios"][r["name"]] = octb / r["median"]
        if r.get("median") and octb and r["kind"] == "experiment":
            d["experiments"][r["name"]] = r["median"] / octb
    for r in rows:
        if r["kind"] == "e2e" and r.get("median") and d["combined_ceiling"]:
            r["efficiency"] = r["median"] / d["combined_ceiling"]
    return d
