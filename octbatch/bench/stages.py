"""Stage ceilings, each stage measured alone in this process on data already in the page cache:
discovery, read, decode (per decoder and thread count), inference on pre-decoded tensors (per backend
and batch size), Parquet write; and the decode + inference ceiling pair of the end-to-end configuration."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import OctbatchError
from .config import BenchConfig
from .measure import measure_rate, row, summarize

__all__ = ["ceiling_pair", "good_files", "stage_rows"]

Log = Callable[[str], None]


def good_files(entries) -> list[str]:
    """The readable scans of a benchmark archive (the synthetic archive's broken/ files left out)."""
    return [e.abspath for e in entries if e.size > 0 and not e.path.startswith("broken/")]


def _batches(good: list[str], bs: int) -> list[list[str]]:
    return [good[i : i + bs] for i in range(0, len(good), bs)] or [good]


def _decode_rate(dec, batches: list[list[str]], timing: dict) -> dict:
    """Decoded images/s of `dec` cycling through `batches` (files it refuses do not count)."""
    cursor = [0]

    def one_batch():
        b = batches[cursor[0] % len(batches)]
        cursor[0] += 1
        out = dec.decode_batch(b)
        return len(b) - sum(e is not None for e in out.errors)

    return measure_rate(one_batch, **timing)


def _infer_rate(runner, u8, spec, timing: dict) -> dict:
    """Images/s of normalize_into + runner.infer on the pre-decoded batch u8."""
    import numpy as np

    from ..preprocess import normalize_into

    x = np.empty((len(u8), spec.channels, spec.height, spec.width), np.float32)

    def infer_once():
        runner.infer(normalize_into(x, u8, spec))
        return len(u8)

    return measure_rate(infer_once, **timing)


def stage_rows(cfg: BenchConfig, archive: Path, model, ctx: dict, threads: int, log: Log) -> list[dict]:
    from ..archive import discover

    common = {"warmup": cfg.warmup, "repeats": cfg.repeats, "min_seconds": cfg.min_seconds}
    entries = list(discover(archive))
    good = good_files(entries)
    log("stage: discovery")
    rate = measure_rate(lambda: sum(1 for _ in discover(archive)), **cfg.timing)
    rows = [row("stage", "discovery", rate, "files/s", ctx, **common)]
    rows.append(_read_row(cfg, entries, good, ctx, common, log))
    rows += _decode_rows(cfg, model, ctx, threads, good, common, log)
    rows += _infer_rows(cfg, model, ctx, threads, good, common, log)
    rows += ceiling_pair(cfg, model, ctx, threads, good, when="before", log=log)
    log("stage: parquet write")
    rows.append(row("stage", "parquet_write", _parquet_write_rate(entries, model, cfg.timing), "rows/s", ctx, **common))
    return rows


def _read_row(cfg: BenchConfig, entries, good: list[str], ctx: dict, common: dict, log: Log) -> dict:
    from ..decode import read_bytes

    log("stage: read")
    total_mb = sum(e.size for e in entries if e.abspath in set(good)) / 1e6

    def read_all():
        for p in good:
            read_bytes(p)
        return 1

    st = measure_rate(read_all, **cfg.timing)
    st = summarize([r * total_mb for r in st["samples"]])
    return row("stage", "read", st, "MB/s", ctx, **common)


def _decode_rows(cfg: BenchConfig, model, ctx: dict, threads: int, good, common: dict, log: Log) -> list[dict]:
    from ..decode import make_decoder

    rows = []
    spec, bs = model.preprocessing, cfg.run_batch_size
    batches = _batches(good, bs)
    for name in cfg.decoders:
        for t in sorted({1, threads}):
            log(f"stage: decode {name} x{t}")
            try:
                # nvjpeg on the GPU when torch sees one, else its CPU twin (the row's `device` says which)
                dec = make_decoder(name, spec, threads=t, device="auto" if name == "nvjpeg" else "cpu")
            except OctbatchError as exc:
                rows.append(row("stage", "decode", None, "img/s", ctx, decoder=name, threads=t, skipped=str(exc)))
                continue
            try:
                rate = _decode_rate(dec, batches, cfg.timing)
                dev = getattr(dec, "device", "cpu")
                rows.append(
                    row(
                        "stage",
                        "decode",
                        rate,
                        "img/s",
                        ctx,
                        decoder=name,
                        device=dev,
                        threads=t,
                        batch_size=bs,
                        **common,
                    )
                )
            finally:
                dec.close()
    return rows


def _infer_rows(cfg: BenchConfig, model, ctx: dict, threads: int, good, common: dict, log: Log) -> list[dict]:
    import numpy as np

    from ..backends import make_runner
    from ..decode import make_decoder

    rows = []
    # Pre-decoded input for the inference ceiling: real images, so the numbers match the run.
    dec = make_decoder("cpu", model.preprocessing, threads=threads)
    sample = dec.decode_batch(good[: max(cfg.batch_sizes)])
    dec.close()
    imgs = sample.images[sample.ok]
    for backend in cfg.backends:
        for b in cfg.batch_sizes:
            reps = int(np.ceil(b / max(1, len(imgs))))
            u8 = np.concatenate([imgs] * reps)[:b]
            log(f"stage: infer {backend} batch {b}")
            try:
                runner = make_runner(
                    backend, model, threads=threads, engine_path=ctx.get("engine_path"), precision=ctx.get("precision")
                ).load()
            except OctbatchError as exc:
                rows.append(row("stage", "infer", None, "img/s", ctx, backend=backend, batch_size=b, skipped=str(exc)))
                continue
            try:
                rate = _infer_rate(runner, u8, model.preprocessing, cfg.timing)
                extra = dict(backend=backend, precision=runner.precision, batch_size=b, threads=threads)
                if backend == "torch":
                    extra["device"] = runner.device  # cuda, or cpu: the CPU twin
                rows.append(row("stage", "infer", rate, "img/s", ctx, **extra, **common))
            finally:
                runner.close()
    return rows


def ceiling_pair(
    cfg: BenchConfig, model, ctx: dict, threads: int, good: list[str], *, when: str, log: Log
) -> list[dict]:
    """The decode and inference ceilings of the end-to-end configuration (decoder `cpu`, all cores, the
    run's batch size). Measured right before and right after the end-to-end runs: on a shared machine
    the cores free at one moment are not those free a minute later, and the ceiling must not be
    measured in a quieter moment than the runs it judges (the larger of the two is used)."""
    from ..backends import make_runner
    from ..decode import make_decoder

    common = {"warmup": cfg.warmup, "repeats": cfg.repeats, "min_seconds": cfg.min_seconds, "when": when}
    spec, bs = model.preprocessing, cfg.run_batch_size
    batches = _batches(good, bs)
    log(f"ceiling ({when} the end-to-end runs): decode cpu x{threads}, infer batch {bs}")
    dec = make_decoder("cpu", spec, threads=threads)
    try:
        d = _decode_rate(dec, batches, cfg.timing)
        sample = dec.decode_batch(batches[0])
    finally:
        dec.close()
    u8 = sample.images[sample.ok]
    runner = make_runner(
        ctx.get("backend", "onnxruntime"),
        model,
        threads=threads,
        engine_path=ctx.get("engine_path"),
        precision=ctx.get("precision"),
    ).load()
    try:
        i = _infer_rate(runner, u8, spec, cfg.timing)
    finally:
        runner.close()
    return [
        row("ceiling", "decode", d, "img/s", ctx, decoder="cpu", threads=threads, batch_size=bs, **common),
        row(
            "ceiling",
            "infer",
            i,
            "img/s",
            ctx,
            backend=runner.name,
            precision=runner.precision,
            threads=threads,
            batch_size=bs,
            **common,
        ),
    ]


def _parquet_write_rate(entries, model, m) -> dict:
    import numpy as np

    from ..results import ShardRows, atomic_write_parquet, make_schema, rows_to_table

    schema = make_schema(model.classes, {"bench": True})
    k = len(model.classes)
    target = 10000
    reps = max(1, target // max(1, len(entries)))
    rows = ShardRows(model.classes)
    probs = np.full((len(entries), k), 1.0 / k, np.float32)
    for _ in range(reps):
        rows.add(entries, probs, [(512, 496)] * len(entries), [None] * len(entries), int(time.time() * 1e6))
    with tempfile.TemporaryDirectory(prefix="octbatch-bench-pq-") as tmp:
        path = os.path.join(tmp, "t.parquet")

        def write():
            t = rows_to_table(
                rows,
                schema,
                model_sha256=model.sha256,
                backend="onnxruntime",
                precision="fp32",
                decoder="cpu",
                run_id="bench",
            )
            atomic_write_parquet(path, [t], schema)
            return len(rows)

        return measure_rate(write, **m)
