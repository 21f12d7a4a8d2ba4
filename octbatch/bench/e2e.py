"""End to end: `octbatch run` (per executor, plus experiments) and the baselines, each repeated in fresh
child processes with a warm-up, summarised as median and spread with the peak RSS of the child's process tree."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .children import spawn
from .config import BenchConfig
from .measure import row, summarize

__all__ = ["e2e_rows"]


def _repeat_child(
    spec: dict, repeats: int, warmup: int, timeout: float, outdir: Path, log: Callable[[str], None]
) -> tuple[dict | None, list[dict], float]:
    """Warm-up runs, then `repeats` timed runs, each in a fresh child with a fresh output."""
    results: list[dict] = []
    rss: list[float] = []
    for k in range(warmup + repeats):
        out = outdir / f"{spec['label']}-{k}"
        shutil.rmtree(out, ignore_errors=True)
        if out.exists():
            out.unlink()
        res, peak = spawn({**spec, "out": str(out) + (".parquet" if spec["method"] != "ray_data" else "")}, timeout)
        shutil.rmtree(out, ignore_errors=True)
        for leftover in (Path(str(out) + ".parquet"), Path(str(out) + ".parquet.lock")):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(str(out) + ".parquet.parts", ignore_errors=True)
        if "error" in res:
            log(f"  {spec['label']}: FAILED {res['error'][:300]}")
            return None, [res], max(rss + [peak])
        if k >= warmup:
            results.append(res)
            rss.append(peak)
        log(
            f"  {spec['label']} {'warm-up' if k < warmup else 'run'} {k}: {res['img_s']:.0f} img/s, peak RSS {peak:.0f} MiB"
        )
    return summarize([r["img_s"] for r in results]), results, max(rss)


def e2e_rows(cfg: BenchConfig, archive: Path, ctx: dict, threads: int, log, tmp: Path) -> list[dict]:
    rows = []
    common = {
        "archive": str(archive),
        "model": ctx["model_path"],
        "engine": cfg.engine,
        "batch_size": cfg.run_batch_size,
        "threads": threads,
    }
    timeout = 600
    plan: list[tuple[str, str, dict[str, Any]]] = [
        ("e2e", f"octbatch run ({ex})", {"method": "octbatch", "executor": ex}) for ex in cfg.executors
    ]
    if cfg.torch_path:  # the torch GPU path (its CPU twin without CUDA): --decoder nvjpeg --backend torch
        torch_run = {"method": "octbatch", "executor": "local", "decoder": "nvjpeg", "run_kw": {"backend": "torch"}}
        plan.append(("e2e", "octbatch run (nvjpeg+torch)", torch_run))
    for name, patch in cfg.extra.get("patches", {}).items():
        plan.append(
            ("experiment", f"octbatch run ({name})", {"method": "octbatch", "executor": "local", "patch": patch})
        )
    for b in cfg.baselines:
        if b == "ray_data":
            from .._deps import is_available

            if not is_available("ray"):
                rows.append(row("baseline", "ray_data", None, "img/s", ctx, skipped="ray is not installed"))
                continue
        plan.append(("baseline", b, {"method": b}))
    for kind, name, extra in plan:
        log(f"end to end: {name}")
        label = name.replace(" ", "_").replace("(", "").replace(")", "").replace(":", "-").replace(",", "-")
        st, results, rss = _repeat_child(
            {**common, **extra, "label": label}, cfg.repeats, cfg.warmup, timeout, tmp, log
        )
        if st is None:
            rows.append(row(kind, name, None, "img/s", ctx, error=results[0]["error"][:2000], peak_rss_mb=rss))
            continue
        info = {k: v for k, v in results[-1].items() if k not in ("img_s", "seconds", "child_rss_self_mb")}
        rows.append(
            row(
                kind,
                name,
                st,
                "img/s",
                ctx,
                peak_rss_mb=round(rss, 1),
                batch_size=cfg.run_batch_size,
                threads=threads,
                warmup=cfg.warmup,
                repeats=cfg.repeats,
                files=results[-1].get("files"),
                executor=extra.get("executor"),
                patch=extra.get("patch"),
                detail=info,
            )
        )
    return rows
