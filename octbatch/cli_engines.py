"""`octbatch build-engine` and `octbatch inspect`. Imports only click here; the work is in octbatch.engines."""

from __future__ import annotations

import json

import click

from .backends.registry import BACKEND_CHOICES, PRECISION_CHOICES

__all__ = ["register", "build_engine_cmd", "inspect_cmd"]


def _log(quiet: bool):
    return (lambda _m: None) if quiet else (lambda m: click.echo(m, err=True))


@click.command("build-engine")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--backend",
    type=click.Choice(BACKEND_CHOICES),
    default="auto",
    help="auto: tensorrt when it imports and a CUDA GPU is present, else onnxruntime.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISION_CHOICES),
    default="fp32",
    help="best: the fastest precision that passes the accuracy guard and is measured faster.",
)
@click.option("--batch", "batch", default="1:64:128", help="Batch profile MIN:OPT:MAX (TensorRT optimizes for OPT).")
@click.option(
    "--calib", type=click.Path(file_okay=False), help="Archive of real scans for int8 calibration (and the guard)."
)
@click.option("--calib-size", type=int, default=256, help="Calibration scans, spread over the archive.")
@click.option(
    "--guard-archive",
    type=click.Path(file_okay=False),
    help="Scans for the accuracy guard [default: --calib scans not used for calibration].",
)
@click.option("--guard-size", type=int, default=256, help="Scans the accuracy guard compares on.")
@click.option(
    "--min-agreement", type=float, default=0.99, help="int8 engines agreeing less often with fp32 are refused."
)
@click.option("--force", is_flag=True, help="Keep an int8 engine that fails the accuracy guard.")
@click.option("--out", "-o", type=click.Path(), help="Also copy the engine (and its fingerprint) here.")
@click.option("--workspace", type=float, default=4.0, help="TensorRT builder workspace, GB.")
@click.option(
    "--timing-cache", type=click.Path(dir_okay=False), help="TensorRT timing cache file [default: in the engine cache]."
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    envvar="OCTBATCH_ENGINE_CACHE",
    help="Engine cache [default: $XDG_CACHE_HOME/octbatch/engines, i.e. ~/.cache/octbatch/engines].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No messages on stderr.")
def build_engine_cmd(
    model,
    backend,
    precision,
    batch,
    calib,
    calib_size,
    guard_archive,
    guard_size,
    min_agreement,
    force,
    out,
    workspace,
    timing_cache,
    cache_dir,
    as_json,
    quiet,
):
    """Build a fingerprinted engine from MODEL.onnx (TensorRT on GPUs, optimized ONNX Runtime on CPUs).

    A second identical build is a cache hit. Run the engine with: octbatch run ARCHIVE --engine PATH.

    \b
    Example:
      octbatch build-engine model.onnx --backend tensorrt --precision fp16 --out model.engine
      octbatch build-engine model.onnx --precision int8 --calib /archive   # ONNX Runtime int8 on CPUs
    """
    from .engines import build_engine

    res = build_engine(
        model,
        backend=backend,
        precision=precision,
        batch=batch,
        calib=calib,
        calib_size=calib_size,
        out=out,
        workspace_gb=workspace,
        timing_cache=timing_cache,
        force=force,
        guard_archive=guard_archive,
        guard_size=guard_size,
        min_agreement=min_agreement,
        cache_dir=cache_dir,
        log=_log(quiet),
    )
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=1, default=str))
    else:
        click.echo(res.out or res.engine_path)


@click.command("inspect")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def inspect_cmd(path, as_json):
    """Show an engine's or model's metadata, fingerprint, inputs/outputs and whether it runs here.

    \b
    Example:
      octbatch inspect model.engine
      octbatch inspect model.onnx --json
    """
    from .engines import inspect_engine

    info = inspect_engine(path)
    if as_json:
        click.echo(json.dumps(info, indent=1, default=str))
        return
    md = info["metadata"]
    click.echo(f"{info['path']}  ({info['kind']}, {info['bytes']:,} bytes)")
    click.echo(f"  classes:       {', '.join(md.get('classes') or []) or '?'}")
    click.echo(f"  preprocessing: {json.dumps(md.get('preprocessing'))}")
    click.echo(f"  output:        {md.get('output')}   precision: {md.get('precision')}")
    if md.get("card"):
        click.echo(f"  card:          {md['card']}")
    for kind in ("inputs", "outputs"):
        for t in info.get(kind) or []:
            click.echo(f"  {kind[:-1]:<6} {t['name']}: {t['shape']} {t['dtype']}")
    if info.get("io_note"):
        click.echo(f"  {info['io_note']}")
    fp = info.get("fingerprint")
    if fp:
        _echo_fingerprint(fp)
    else:
        click.echo("  fingerprint:   none")
    if info["can_run_here"]:
        click.echo("  runs here:     yes")
    else:
        click.echo("  runs here:     no")
        for d in info["differences"]:
            click.echo(f"    - {d}")


def _echo_fingerprint(fp: dict) -> None:
    m = fp.get("machine", {})
    click.echo(
        f"  built:         {fp.get('built_at')} by octbatch {fp.get('octbatch')}, {fp.get('backend')} {fp.get('precision')}, "
        f"batch {':'.join(map(str, fp.get('batch_profile') or []))}"
    )
    click.echo(f"  source:        {fp['source']['path']} (sha256 {fp['source']['sha256'][:16]}...)")
    facts = ", ".join(f"{k}={v}" for k, v in m.items() if k not in ("backend", "isa"))
    click.echo(f"  built on:      {facts}")
    if fp.get("calibration"):
        c = fp["calibration"]
        click.echo(f"  calibration:   {c['files']} scans from {c['archive']} (hash {c['hash'][:12]})")
    g = fp.get("guard")
    if g:
        acc = (
            f", accuracy fp32 {g['accuracy_reference']:.2%} vs engine {g['accuracy_engine']:.2%}"
            if "accuracy_reference" in g
            else ""
        )
        click.echo(
            f"  guard:         agreement {g['agreement']:.2%} on {g['n']} scans, max |dp| {g['max_abs_prob_diff']:.4f}{acc}"
        )


def register(group: click.Group) -> None:
    group.add_command(build_engine_cmd)
    group.add_command(inspect_cmd)
