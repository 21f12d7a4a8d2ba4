"""Scale rows: discovery (counting, and holding the per-file key set `octbatch run` holds) and, up to a
size, `octbatch run` itself, on archives of 10k..1M hard links to the real (or synthetic) scans."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from .archives import image_files, link_archive, real_data_dir
from .children import spawn
from .config import BenchConfig
from .measure import row

__all__ = ["scale_rows"]


def scale_rows(cfg: BenchConfig, ctx: dict, threads: int, log) -> list[dict]:
    """For each size in cfg.scale: link an archive of that many files, time discovery (count, keys) and,
    up to cfg.scale_e2e_max files, `octbatch run`. The linked archives are removed unless cfg.scale_dir."""
    rows: list[dict] = []
    real = real_data_dir()
    srcs = image_files(real) if real else []
    base = Path(cfg.scale_dir) if cfg.scale_dir else Path(tempfile.mkdtemp(prefix="octbatch-bench-scale-"))
    source_note = f"real OCT2017 scans ({len(srcs)}) hard-linked" if srcs else "synthetic scans hard-linked"
    try:
        if not srcs:
            from ..synth import make_archive

            make_archive(base / "seed", 200, seed=1, broken=False)
            srcs = image_files(base / "seed")
        for n in cfg.scale:
            root = base / f"n{n}"
            t0 = time.perf_counter()
            if not root.exists():
                log(f"scale: linking {n} files")
                link_archive(srcs, root, n)
            build_s = time.perf_counter() - t0
            for mode in ("count", "keys"):
                log(f"scale: discover {n} ({mode})")
                rows.append(_discover_row(root, n, mode, ctx, build_s, source_note))
            if n <= cfg.scale_e2e_max:
                log(f"scale: octbatch run on {n}")
                rows.append(_run_row(cfg, root, base, n, ctx, threads, source_note))
    finally:
        if not cfg.scale_dir:
            log("scale: removing the linked archives")
            shutil.rmtree(base, ignore_errors=True)
    return rows


def _discover_row(root: Path, n: int, mode: str, ctx: dict, build_s: float, source_note: str) -> dict:
    res, rss = spawn({"method": "discover", "archive": str(root), "mode": mode}, 900)
    if "error" in res:
        return row("scale", f"discover ({mode})", None, "files/s", ctx, files=n, error=res["error"])
    return row(
        "scale",
        f"discover ({mode})",
        None,
        "files/s",
        ctx,
        files=res["files"],
        seconds=res["seconds"],
        median=res["files_s"],
        peak_rss_mb=round(rss, 1),
        rss_before_mb=round(res["rss_before_mb"], 1),
        build_seconds=round(build_s, 1),
        source=source_note,
    )


def _run_row(cfg: BenchConfig, root: Path, base: Path, n: int, ctx: dict, threads: int, source_note: str) -> dict:
    spec = {
        "method": "octbatch",
        "archive": str(root),
        "out": str(base / f"out-{n}.parquet"),
        "model": ctx["model_path"],
        "engine": cfg.engine,
        "batch_size": cfg.run_batch_size,
        "threads": threads,
    }
    res, rss = spawn(spec, 1800)
    return row(
        "scale",
        "octbatch run",
        None,
        "img/s",
        ctx,
        files=res.get("files", n),
        seconds=res.get("seconds"),
        median=res.get("img_s"),
        peak_rss_mb=round(rss, 1),
        error=res.get("error"),
        source=source_note,
    )
