"""The `octbatch` command. Thin: each command builds a config, calls one library function, renders."""

from __future__ import annotations

import json
import sys

import click

from ._version import __version__
from .errors import ExitCode, OctbatchError

__all__ = ["cli", "main"]

EXIT_CODES_HELP = """\b
Exit codes:
  0   every discovered file has a row and all were read
  1   user error (message on stderr says how to fix it)
  2   usage error (bad option)
  3   finished; some files could not be read (their rows say status=error)
  4   finished; some shards failed on every retry (rows say status=failed; rerun to retry)
  130 interrupted; committed shards are kept, rerun the same command to resume"""


class OctbatchGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OctbatchError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted: committed shards are kept; run the same command again to resume.", err=True)
            ctx.exit(int(ExitCode.INTERRUPTED))


def _config_defaults(ctx, param, value):
    from .config import load_toml_defaults

    if value:
        try:
            ctx.default_map = {**(ctx.default_map or {}), **load_toml_defaults(value)}
        except OctbatchError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@click.group(cls=OctbatchGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="octbatch")
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    envvar="OCTBATCH_CONFIG",
    callback=_config_defaults,
    is_eager=True,
    expose_value=False,
    help="TOML file whose [run], [bench], ... tables set option defaults.",
)
def cli():
    """Classify archives of retinal OCT scans into one Parquet table.

    \b
    Example:
      octbatch run /archive --out results.parquet
      octbatch report results.parquet --html report.html
    """


def _model_options(f):
    for opt in reversed(
        [
            click.option(
                "--model",
                type=click.Path(dir_okay=False),
                envvar="OCTBATCH_MODEL",
                help="ONNX classifier [default: the shipped OCT model].",
            ),
            click.option(
                "--classes", help="Class names in output order, comma-separated (for models without octbatch metadata)."
            ),
            click.option("--input-size", help="Model input HxW, e.g. 224 or 224x224 (models without metadata)."),
            click.option("--mean", help="Normalisation mean on the 0..1 scale, one value or one per channel."),
            click.option("--std", help="Normalisation std on the 0..1 scale, one value or one per channel."),
        ]
    ):
        f = opt(f)
    return f


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("archive", type=str)
@click.option(
    "--out", "-o", required=True, type=click.Path(dir_okay=False), envvar="OCTBATCH_OUT", help="Output Parquet file."
)
@_model_options
@click.option(
    "--engine",
    type=click.Path(dir_okay=False),
    envvar="OCTBATCH_ENGINE",
    help="A built engine (octbatch build-engine); its fingerprint is checked first.",
)
@click.option(
    "--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", envvar="OCTBATCH_BACKEND"
)
@click.option(
    "--rebuild-on-mismatch", is_flag=True, help="Rebuild --engine when its fingerprint does not match this machine."
)
@click.option(
    "--decoder",
    type=click.Choice(["auto", "cpu", "pillow", "dali"]),
    default="auto",
    envvar="OCTBATCH_DECODER",
    help="auto: DALI on a GPU, else the fastest CPU decoder measured (simplejpeg).",
)
@click.option("--batch-size", "-b", type=int, default=64, envvar="OCTBATCH_BATCH_SIZE")
@click.option(
    "--threads",
    "-j",
    type=int,
    default=0,
    envvar="OCTBATCH_THREADS",
    help="Decode and inference threads; 0 = all cores.",
)
@click.option("--limit", type=int, help="Classify only the first N files (in discovery order).")
@click.option("--include", multiple=True, help="Only paths matching this glob (repeatable, or comma-separated).")
@click.option("--exclude", multiple=True, help="Skip paths matching this glob (repeatable, or comma-separated).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output and its unfinished work.")
@click.option(
    "--slice",
    metavar="I/N",
    envvar=["OCTBATCH_SLICE", "OCTBATCH_SHARD"],
    help="Process only slice i of N (from 0), e.g. one task of a job array; assemble with octbatch merge.",
)
@click.option("--shard", hidden=True, help="Former name of --slice.")
@click.option(
    "--shard-size",
    type=int,
    default=1024,
    envvar="OCTBATCH_SHARD_SIZE",
    help="Files per committed shard (the unit of resume).",
)
@click.option("--retry-errors", is_flag=True, help="Also retry files whose earlier rows say status=error.")
@click.option(
    "--max-pixels",
    type=int,
    default=64_000_000,
    help="Refuse images whose header claims more pixels (decompression bombs).",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default=None,
    envvar="OCTBATCH_EXECUTOR",
    help="Where shards run [default: local; ray when --ray-address or --workers is given].",
)
@click.option(
    "--ray-address", envvar="OCTBATCH_RAY_ADDRESS", help="auto, ray://host:port or host:port; none starts a local Ray."
)
@click.option(
    "--workers", type=int, envvar="OCTBATCH_WORKERS", help="Ray actors [default: one per GPU, else one per 2 CPUs]."
)
@click.option(
    "--gpus-per-worker",
    type=float,
    default=None,
    envvar="OCTBATCH_GPUS_PER_WORKER",
    help="GPUs per Ray actor [default: 1 when the cluster has GPUs].",
)
@click.option("--max-shard-retries", type=int, default=2, envvar="OCTBATCH_MAX_SHARD_RETRIES")
@click.option(
    "--formats",
    multiple=True,
    envvar="OCTBATCH_FORMATS",
    help="Look only at these formats: jpeg, png, tiff, dicom (comma-separated) [default: all].",
)
@click.option(
    "--phi",
    type=click.Choice(["pseudonymise", "keep"]),
    default="pseudonymise",
    envvar="OCTBATCH_PHI",
    help="DICOM patient IDs: keyed HMAC-SHA256 pseudonyms, or keep the real IDs.",
)
@click.option(
    "--phi-key-file",
    type=click.Path(dir_okay=False),
    envvar="OCTBATCH_PHI_KEY_FILE",
    help="Key for the pseudonyms [default: $OCTBATCH_PHI_KEY, else a random key per output table].",
)
@click.option(
    "--max-volume-pixels",
    type=int,
    default=4_000_000_000,
    help="Refuse volumes whose header claims more pixels (rows x columns x frames).",
)
@click.option(
    "--volumes",
    "volumes_out",
    type=click.Path(dir_okay=False),
    help="Also write the per-volume table (one row per DICOM series, TIFF stack or patient).",
)
@click.option("--min-frames", type=int, default=1, help="Per-volume rule: frames a finding needs.")
@click.option("--min-prob", type=float, default=0.0, help="Per-volume rule: confidence a frame needs to count.")
@click.option("--referral", multiple=True, help="Per-volume rule: CLASS=urgent|routine|observation (repeatable).")
@click.option(
    "--storage-option",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="For an s3:// ARCHIVE: an S3 setting beyond the AWS_* variables (repeatable), e.g. virtual_hosted_style_request=false.",
)
@click.option(
    "--gate",
    type=click.Choice(["flag", "reject", "off"]),
    default="flag",
    envvar="OCTBATCH_GATE",
    help="OCT gate for images that are not B-scans: flag (status=suspect, prediction kept), reject (status=not_oct, no prediction), off.",
)
@click.option(
    "--gate-model",
    type=click.Path(dir_okay=False),
    envvar="OCTBATCH_GATE_MODEL",
    help="Gate ONNX file (octbatch train-gate) [default: the shipped gate].",
)
@click.option(
    "--gate-threshold",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    envvar="OCTBATCH_GATE_THRESHOLD",
    help="Flag rows whose oct_score is below this [default: the threshold stored in the gate file].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no summary on stderr.")
@click.option("--verbose", "-v", count=True, help="Log progress lines even when stderr is not a terminal.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def run(
    archive,
    out,
    model,
    classes,
    input_size,
    mean,
    std,
    engine,
    backend,
    rebuild_on_mismatch,
    decoder,
    batch_size,
    threads,
    limit,
    include,
    exclude,
    overwrite,
    slice,  # the option's name (and its TOML key)
    shard,
    shard_size,
    retry_errors,
    max_pixels,
    executor,
    ray_address,
    workers,
    gpus_per_worker,
    max_shard_retries,
    formats,
    phi,
    phi_key_file,
    max_volume_pixels,
    volumes_out,
    min_frames,
    min_prob,
    referral,
    storage_options,
    gate,
    gate_model,
    gate_threshold,
    as_json,
    quiet,
    verbose,
    no_progress,
):
    """Classify every scan under ARCHIVE into one Parquet table (--out).

    Rerunning with the same --out resumes after a crash and, on a grown archive, classifies only
    new or changed files. Files that cannot be read still get a row (status=error). DICOM volumes
    and multi-page TIFF stacks get one row per frame; DICOM patient IDs are pseudonymised.
    Images that do not look like OCT B-scans (fundus photos, localisers, X-rays, screenshots, blank
    frames) get status=suspect (or not_oct with --gate reject) and a gate_reason; nothing is dropped.
    ARCHIVE may be s3://BUCKET/PREFIX (pip install 'octbatch[s3]'; AWS_* variables as usual).

    \b
    Example:
      octbatch run /archive --out results.parquet --volumes volumes.parquet
      octbatch run /archive --out results.parquet --slice 3/8   # one task of a job array
    """
    from .config import RunConfig, split_csv
    from .pipeline import run as run_pipeline
    from .progress import make_reporter

    cfg = RunConfig(
        archive=archive,
        out=out,
        model=model,
        engine=engine,
        backend=backend,
        rebuild_on_mismatch=rebuild_on_mismatch,
        classes=classes,
        input_size=input_size,
        mean=mean,
        std=std,
        decoder=decoder,
        batch_size=batch_size,
        threads=threads,
        limit=limit,
        include=split_csv(include),
        exclude=split_csv(exclude),
        overwrite=overwrite,
        slice=slice or shard,
        shard_size=shard_size,
        retry_errors=retry_errors,
        max_pixels=max_pixels,
        executor=executor,
        ray_address=ray_address,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        max_shard_retries=max_shard_retries,
        storage_options=tuple(storage_options),
        gate=gate,
        gate_model=gate_model,
        gate_threshold=gate_threshold,
        formats=split_csv(formats),
        phi=phi,
        phi_key_file=phi_key_file,
        max_volume_pixels=max_volume_pixels,
        volumes=volumes_out,
        volume_min_frames=min_frames,
        volume_min_prob=min_prob,
        referral=split_csv(referral),
    )
    reporter = make_reporter(quiet=quiet, verbose=verbose, no_progress=no_progress)
    summary = run_pipeline(cfg, reporter)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=1, default=str))
    if not quiet:
        _print_summary(summary)
    sys.exit(summary.exit_code)


def _print_summary(s) -> None:
    lines = [
        f"octbatch: {s.discovered} file(s) discovered, {s.processed} classified now ({s.ok} ok, {s.errors} unreadable), "
        f"{s.skipped} already done"
        + (f", {s.dropped_deleted} deleted file row(s) dropped" if s.dropped_deleted else ""),
        f"octbatch: {s.files_per_second:,.0f} files/s, {s.seconds:.1f} s total, backend {s.backend}, decoder {s.decoder}",
    ]
    if s.suspect or s.not_oct:
        what = (
            f"{s.suspect} flagged status=suspect (prediction kept)"
            if s.suspect
            else f"{s.not_oct} rejected status=not_oct"
        )
        lines.append(
            f"octbatch: OCT gate: {what}: they do not look like OCT B-scans; see the gate_reason column or octbatch report"
        )
    if s.discovered == 0:
        lines.append(
            f"octbatch: warning: no image files (.jpeg .jpg .png .tif .tiff .dcm, DICOM) found under {s.archive}; check the path and --include/--exclude"
        )
    if s.failed_files:
        lines.append(
            f"octbatch: {len(s.failed_shards)} shard(s) ({s.failed_files} files) failed on every retry; rerun to retry them"
        )
    if s.redone_shards:
        shown = ", ".join(s.redone_shards[:5]) + (
            f" and {len(s.redone_shards) - 5} more" if len(s.redone_shards) > 5 else ""
        )
        lines.append(f"octbatch: {len(s.redone_shards)} shard(s) redone after a worker died or a try failed: {shown}")
    if s.merged:
        lines.append(f"octbatch: wrote {s.rows} row(s) to {s.out}")
    if getattr(s, "volumes", None) is not None:
        lines.append(f"octbatch: wrote {s.volumes} volume row(s)")
    else:
        lines.append(
            f"octbatch: slice {s.slice} committed under {s.out}.parts; run octbatch merge {s.out} when all slices are done"
        )
    click.echo("\n".join(lines), err=True)


@cli.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--archive", type=click.Path(file_okay=False), help="Archive root [default: the one the slices ran on].")
@click.option("--allow-missing", is_flag=True, help="Merge even if slices or files are missing.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def merge(out, archive, allow_missing, as_json, quiet):
    """Assemble the parts of `octbatch run --slice i/N` runs into OUT.

    \b
    Example:
      octbatch run /archive --out results.parquet --slice 0/2
      octbatch run /archive --out results.parquet --slice 1/2
      octbatch merge results.parquet
    """
    from .pipeline import merge as merge_parts

    s = merge_parts(out, archive=archive, allow_missing=allow_missing)
    if as_json:
        click.echo(json.dumps(s.to_dict(), indent=1, default=str))
    if not quiet:
        click.echo(
            f"octbatch: merged {s.rows} row(s) into {s.out}"
            + (f", dropped {s.dropped_deleted} row(s) of deleted files" if s.dropped_deleted else ""),
            err=True,
        )
    sys.exit(ExitCode.FAILED_SHARDS if s.failed_files else 0)


@cli.command()
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of text.")
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False),
    help="Also write one self-contained HTML report here (needs the report extra).",
)
@click.option(
    "--archive",
    type=click.Path(file_okay=False),
    help="Read the sample scans from here [default: the table's archive root].",
)
@click.option(
    "--top", type=int, default=20, help="Rows in each list of the HTML report (mistakes, least confident, patients)."
)
@click.option(
    "--referrals",
    type=click.Path(dir_okay=False),
    help="Write every patient's referral level to this CSV (with --html).",
)
@click.option(
    "--png-dir",
    type=click.Path(file_okay=False),
    help="Also write the report's charts as PNG files here (with --html).",
)
def report(results, as_json, html_out, archive, top, referrals, png_dir):
    """Summarise a results table: predictions, unreadable files, accuracy where names give labels.

    With --html, also write a report a person can open in a browser or attach to an email: confusion
    matrix, calibration, sample scans, per-patient referral list, unreadable files.

    \b
    Example:
      octbatch report results.parquet
      octbatch report results.parquet --html report.html --referrals referrals.csv
    """
    from .report import render_text, summary_dict

    if (referrals or png_dir) and not html_out:
        raise OctbatchError(
            "--referrals and --png-dir are written together with the HTML report", "Add --html report.html."
        )
    if html_out:
        from .report import write_html

        res = write_html(results, html_out, archive=archive, top=top, referrals_csv=referrals, png_dir=png_dir)
        s = summary_dict(res["aggregate"])
    else:
        from .report import aggregate

        s = summary_dict(aggregate(results, details=False))
    click.echo(json.dumps(s, indent=1) if as_json else render_text(s))
    if html_out:
        click.echo(
            f"octbatch: wrote the HTML report {html_out}"
            + (f", {res['patients']} patient(s) to {referrals}" if referrals else "")
            + (f", {len(res['pngs'])} chart(s) to {png_dir}" if png_dir else ""),
            err=True,
        )


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--n", "n", type=int, default=500, help="Number of scans.")
@click.option("--seed", type=int, default=0)
@click.option("--no-broken", is_flag=True, help="Do not add the three broken files.")
def synth(directory, n, seed, no_broken):
    """Write a labelled synthetic archive of OCT-like scans (plus a few broken files).

    \b
    Example:
      octbatch synth demo-archive --n 200
      octbatch run demo-archive --out demo.parquet
    """
    from .synth import make_archive

    info = make_archive(directory, n, seed=seed, broken=not no_broken)
    click.echo(
        f"octbatch: wrote {info['scans']} synthetic scans and {info['broken']} broken file(s) to {directory}", err=True
    )


@cli.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False))
@click.option("--epochs", type=int, default=None, help="Training epochs [default: the shipped model's].")
@click.option("--seed", type=int, default=0)
@click.option("--threads", type=int, default=0)
@click.option(
    "--resize",
    type=click.Choice(["center_crop", "stretch"]),
    default=None,
    help="How a scan becomes the square input [default: center_crop, chosen by the width experiment].",
)
@click.option(
    "--lateral-scale",
    default=None,
    metavar="LO,HI|off",
    help="Random lateral scale augmentation range [default: 0.6,1.6]; 'off' disables it.",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False),
    help="Also write metrics.json, training curves, confusion matrices, reliability diagrams and sample grids here (e.g. engines/).",
)
def train(data_dir, out, epochs, seed, threads, resize, lateral_scale, report_dir):
    """Train a classifier on labelled scans (needs the `train` extra: torch) and export it to ONNX.

    Scans whose manifest split_hint is test-v3, test or val are report-only: evaluated once at the
    end, never trained on or used for selection. The fitted temperature is baked into the model.

    \b
    Example:
        octbatch train ../shared/data/oct2017 --out my-model.onnx --report-dir my-report
    """
    from .training import train as train_model

    kw = {"seed": seed}
    if epochs is not None:
        kw["epochs"] = epochs
    if threads:
        kw["threads"] = threads
    if resize:
        kw["resize"] = resize
    if lateral_scale is not None:
        kw["lateral_scale"] = _parse_range(lateral_scale)
    if report_dir:
        kw["report_dir"] = report_dir
    metrics = train_model(data_dir, out, **kw)
    click.echo(json.dumps(metrics, indent=1, default=str))


def _parse_range(text: str):
    if text.strip().lower() in ("off", "none", "0"):
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise OctbatchError(
            f"--lateral-scale {text!r} is not LO,HI", "Give two numbers, e.g. --lateral-scale 0.6,1.6, or 'off'."
        ) from None
    if not 0 < lo <= hi:
        raise OctbatchError(f"--lateral-scale {text!r} is out of range", "Use 0 < LO <= HI, e.g. 0.6,1.6.")
    return lo, hi


def main() -> None:
    cli(prog_name="octbatch")


# Commands that live beside their subsystem. Each module imports only click at top level and
# defines register(group); a module that is not part of this install is skipped.
_SUBCOMMAND_MODULES = ("cli_engines", "cli_bench", "cli_gpu", "cli_volumes", "cli_gate")


def _register_subcommands() -> None:
    import importlib

    for name in _SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{name}":
                continue
            raise
        mod.register(cli)


_register_subcommands()
