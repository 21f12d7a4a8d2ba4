"""`run_bench`: every measurement of a BenchConfig, in order (stages, end to end, the ceilings again,
scale), then results.json, summary.md, charts and report.html."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from ..machine import library_versions, machine_facts
from .archives import prepare_archive
from .config import BenchConfig, quick_overrides, with_torch_path
from .derive import derive
from .e2e import e2e_rows
from .scale import scale_rows
from .stages import ceiling_pair, good_files, stage_rows

__all__ = ["run_bench"]


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = lambda m: None) -> dict:
    """Run every measurement of `cfg` and write results.json, summary.md, charts and report.html into cfg.out."""
    from ..config import default_threads

    if cfg.quick:
        cfg = quick_overrides(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = cfg.threads or default_threads()
    t_all = time.perf_counter()
    ctx = {"machine": machine_facts(), "versions": library_versions()}
    work = Path(tempfile.mkdtemp(prefix="octbatch-bench-"))
    try:
        archive, archive_note = prepare_archive(
            archive=cfg.archive, synthetic=cfg.synthetic, files=cfg.files if not cfg.synthetic else 0, workdir=work
        )
        log(f"archive: {archive_note}")
        cfg, model = _load_model(cfg, ctx)
        cfg = with_torch_path(cfg)
        ctx["model_path"] = model.path
        rows = stage_rows(cfg, archive, model, ctx, threads, log)
        rows += e2e_rows(cfg, archive, ctx, threads, log, work)
        from ..archive import discover

        rows += ceiling_pair(cfg, model, ctx, threads, good_files(discover(archive)), when="after", log=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if cfg.scale:
        rows += scale_rows(cfg, ctx, threads, log)
    derived = derive(rows, cfg, threads, gpu=bool(ctx["machine"]["gpu"]) and "tensorrt" in cfg.backends)
    result = {
        "octbatch_bench": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": ctx["machine"],
        "versions": ctx["versions"],
        "archive": archive_note,
        "model": {
            "path": model.path,
            "sha256": model.sha256,
            "classes": list(model.classes),
            "input": [model.preprocessing.channels, *model.preprocessing.input_size],
        },
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
        "derived": derived,
        "rows": rows,
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    return _write(result, cfg, out)


def _write(result: dict, cfg: BenchConfig, out: Path) -> dict:
    """results.json, the charts, summary.md and (with jinja2) report.html; results.json again with their names."""
    from .._deps import is_available
    from .render import render_charts, render_markdown

    with open(out / "results.json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    if cfg.charts:
        charts, note = render_charts(result, out)
        result["charts"] = charts or note
    (out / "summary.md").write_text(render_markdown(result))
    if is_available("jinja2"):  # the report extra: the same summary and charts as one HTML page
        from ..report.bench_html import bench_html

        (out / "report.html").write_text(bench_html(result, out))
        result["html"] = str(out / "report.html")
    with open(out / "results.json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    return result


def _load_model(cfg: BenchConfig, ctx: dict):
    """(cfg, model info): with --engine, the engine's model and backend (checked as `octbatch run` checks it)."""
    from ..model import load_model_info

    if cfg.engine:
        from ..engines import resolve_engine_for_run

        r = resolve_engine_for_run(cfg.engine, backend="auto", rebuild=False, model=cfg.model)
        ctx.update(engine_path=r.engine_path, precision=r.precision)
        return replace(cfg, backends=(r.backend,)), load_model_info(r.model_path)
    return cfg, load_model_info(cfg.model)
