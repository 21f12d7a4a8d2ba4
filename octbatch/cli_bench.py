"""`octbatch bench`: registered on the main group by cli.py. Imports only click at top level."""

from __future__ import annotations

import click

__all__ = ["bench", "register"]


def _csv(values, conv=str) -> tuple:
    out: list = []
    for v in values or ():
        out.extend(conv(x) for x in str(v).split(",") if x.strip())
    return tuple(out)


@click.command()
@click.option(
    "--archive",
    type=click.Path(file_okay=False, exists=True),
    help="Benchmark this archive [default: the real OCT2017 scans when present, else synthetic].",
)
@click.option("--synthetic", type=int, help="Benchmark a synthetic archive of N scans (octbatch.synth).")
@click.option(
    "--files",
    type=int,
    default=2000,
    help="Files in the bench archive (real scans are hard-linked to reach it; 0 with --archive: use it as is).",
)
@click.option(
    "--model",
    type=click.Path(dir_okay=False, exists=True),
    envvar="OCTBATCH_MODEL",
    help="ONNX classifier [default: the shipped model].",
)
@click.option(
    "--engine",
    type=click.Path(dir_okay=False, exists=True),
    help="A built engine (octbatch build-engine) instead of --model.",
)
@click.option(
    "--backends",
    multiple=True,
    default=("onnxruntime",),
    help="Inference backends to measure (comma-separated or repeated).",
)
@click.option("--decoders", multiple=True, default=("cpu", "pillow"), help="Decoders to measure: cpu, pillow, dali.")
@click.option("--batch-sizes", multiple=True, default=("16,64,128",), help="Batch sizes for the inference ceiling.")
@click.option(
    "--batch-size", "run_batch_size", type=int, default=64, help="Batch size of the end-to-end runs and baselines."
)
@click.option(
    "--executors", multiple=True, default=("local",), help="Executors for `octbatch run` end to end: local, ray."
)
@click.option(
    "--baselines",
    multiple=True,
    default=("naive,dataloader,ray_data",),
    help="Baselines: naive, dataloader, ray_data (skipped without ray).",
)
@click.option("--threads", "-j", type=int, default=0, help="Cores to use; 0 = all.")
@click.option("--min-seconds", type=float, default=2.0, help="Minimum duration of each timed stage repeat.")
@click.option("--repeats", type=int, default=3, help="Timed repeats per measurement (after one warm-up).")
@click.option("--warmup", type=int, default=1, help="Untimed warm-up runs per measurement.")
@click.option("--scale", help="Archive sizes for the scale section, e.g. 10000,100000,1000000 (hard links).")
@click.option("--scale-e2e-max", type=int, default=10000, help="Largest scale archive also run end to end.")
@click.option(
    "--scale-dir", type=click.Path(file_okay=False), help="Keep the linked scale archives here (reused next time)."
)
@click.option("--no-charts", is_flag=True, help="JSON and Markdown only.")
@click.option(
    "--out", "-o", type=click.Path(file_okay=False), default="benchmarks/results/latest", help="Output folder."
)
@click.option("--quick", is_flag=True, help="Smoke check in under a minute: small synthetic archive, one short repeat.")
@click.option("--quiet", "-q", is_flag=True)
def bench(
    archive,
    synthetic,
    files,
    model,
    engine,
    backends,
    decoders,
    batch_sizes,
    run_batch_size,
    executors,
    baselines,
    threads,
    min_seconds,
    repeats,
    warmup,
    scale,
    scale_e2e_max,
    scale_dir,
    no_charts,
    out,
    quick,
    quiet,
):
    """Measure each stage's ceiling, `octbatch run` end to end and baselines side by side.

    Writes results.json (every row, with machine and versions), summary.md and PNG charts to --out.

    \b
    Example:
      octbatch bench --files 2000 --out benchmarks/results/latest
      octbatch bench --quick    # a short smoke run
    """
    from .bench import run_bench

    cfg = _bench_config(dict(locals()))
    log = (lambda m: None) if quiet else (lambda m: click.echo(f"octbatch bench: {m}", err=True))
    res = run_bench(cfg, log)
    if not quiet:
        _echo_summary(res, out)


def _bench_config(o: dict):
    """The BenchConfig of the command's options, refusing inconsistent ones."""
    from .bench import BenchConfig
    from .errors import OctbatchError

    if o["archive"] and o["synthetic"]:
        raise OctbatchError(
            "--archive and --synthetic are exclusive",
            "Give one of them (or neither for the real scans / a synthetic default).",
        )
    if o["min_seconds"] <= 0 or o["repeats"] < 1 or o["warmup"] < 0:
        raise OctbatchError(
            "--min-seconds must be positive, --repeats at least 1, --warmup not negative", "Fix the option values."
        )
    try:
        sizes = _csv([o["scale"]], int) if o["scale"] else ()
        bss = _csv(o["batch_sizes"], int)
    except ValueError:
        raise OctbatchError(
            "--scale and --batch-sizes take comma-separated integers", "e.g. --scale 10000,100000"
        ) from None
    same = ("out", "archive", "synthetic", "files", "model", "engine", "min_seconds", "repeats", "warmup", "threads")
    return BenchConfig(
        **{k: o[k] for k in same},
        backends=_csv(o["backends"]),
        decoders=_csv(o["decoders"]),
        batch_sizes=bss,
        executors=_csv(o["executors"]),
        baselines=_csv(o["baselines"]),
        run_batch_size=o["run_batch_size"],
        scale=sizes,
        scale_e2e_max=o["scale_e2e_max"],
        scale_dir=o["scale_dir"],
        charts=not o["no_charts"],
        quick=o["quick"],
    )


def _echo_summary(res: dict, out: str) -> None:
    d = res["derived"]
    eff = f"{100 * d['efficiency']:.0f}%" if d.get("efficiency") else "n/a"
    click.echo(
        f"octbatch bench: octbatch run {d.get('octbatch_img_s') or 0:,.0f} img/s = {eff} of the combined ceiling "
        f"{d.get('combined_ceiling') or 0:,.0f} img/s; "
        + ", ".join(f"{k} x{v:.2f}" for k, v in d.get("ratios", {}).items()),
        err=True,
    )
    click.echo(
        f"octbatch bench: wrote {out}/results.json, {out}/summary.md"
        + (
            f" and {len(res['charts'])} chart(s)"
            if isinstance(res.get("charts"), list) and res["charts"]
            else f" (charts: {res.get('charts') or 'off'})"
        ),
        err=True,
    )


def register(group: click.Group) -> None:
    group.add_command(bench)
