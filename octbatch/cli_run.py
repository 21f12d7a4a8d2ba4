"""`octbatch run` and `octbatch merge`: registered on the main group by cli.py. Imports only click at
top level; the work is octbatch.pipeline's, the checks RunConfig's."""

from __future__ import annotations

import json
import sys

import click

from .backends.registry import RUNNER_CHOICES
from .choice import DECODER_CHOICES
from .errors import ExitCode

__all__ = ["run", "merge", "run_config", "register", "EXIT_CODES_HELP"]

EXIT_CODES_HELP = """\b
Exit codes:
  0   every discovered file has a row and all were read
  1   user error (message on stderr says how to fix it)
  2   usage error (bad option)
  3   finished; some files could not be read (their rows say status=error)
  4   finished; some shards failed on every retry (rows say status=failed; rerun to retry)
  130 interrupted; committed shards are kept, rerun the same command to resume"""


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


@click.command(epilog=EXIT_CODES_HELP)
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
    "--backend",
    type=click.Choice(RUNNER_CHOICES),
    default="auto",
    envvar="OCTBATCH_BACKEND",
    help="auto: tensorrt with --engine on a GPU, else torch when torch sees CUDA, else onnxruntime.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default=None,
    envvar="OCTBATCH_PRECISION",
    help="The torch backend's precision [default: fp16 on CUDA, fp32 on the CPU]; an engine's is fixed when built.",
)
@click.option(
    "--rebuild-on-mismatch", is_flag=True, help="Rebuild --engine when its fingerprint does not match this machine."
)
@click.option(
    "--decoder",
    type=click.Choice(DECODER_CHOICES),
    default="auto",
    envvar="OCTBATCH_DECODER",
    help="auto: DALI on a GPU, else nvjpeg (torchvision) when torch sees CUDA, else the fastest CPU decoder measured (simplejpeg).",
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
def run(**opts):
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
    from .pipeline import run as run_pipeline
    from .progress import make_reporter

    shown = {k: opts.pop(k) for k in ("as_json", "quiet", "verbose", "no_progress")}
    summary = run_pipeline(
        run_config(opts), make_reporter(**{k: shown[k] for k in ("quiet", "verbose", "no_progress")})
    )
    if shown["as_json"]:
        click.echo(json.dumps(summary.to_dict(), indent=1, default=str))
    if not shown["quiet"]:
        _print_summary(summary)
    sys.exit(summary.exit_code)


# Options of `octbatch run` whose RunConfig field has another name.
_FIELD_OF = {"volumes_out": "volumes", "min_frames": "volume_min_frames", "min_prob": "volume_min_prob"}
# Repeatable options that also take comma-separated lists.
_CSV = ("include", "exclude", "formats", "referral")


def run_config(opts: dict):
    """The RunConfig of `octbatch run`'s options (as Click passes them); parsing and checks are RunConfig's."""
    from .config import RunConfig, split_csv

    kw = {_FIELD_OF.get(k, k): v for k, v in opts.items() if k != "shard"}
    kw["slice"] = opts.get("slice") or opts.get("shard")  # --shard: the former name of --slice
    for k in _CSV:
        kw[k] = split_csv(kw.get(k))
    kw["storage_options"] = tuple(kw.get("storage_options") or ())
    return RunConfig(**kw)


def _print_summary(s) -> None:
    lines = [
        f"octbatch: {s.discovered} file(s) discovered, {s.processed} classified now ({s.ok} ok, {s.errors} unreadable), "
        f"{s.skipped} already done"
        + (f", {s.dropped_deleted} deleted file row(s) dropped" if s.dropped_deleted else ""),
        f"octbatch: {s.files_per_second:,.0f} files/s, {s.seconds:.1f} s total, backend {s.backend}, decoder {s.decoder}",
        *(f"octbatch: {reason}" for reason in s.auto),
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
    if not s.merged:
        lines.append(
            f"octbatch: slice {s.slice} committed under {s.out}.parts; run octbatch merge {s.out} when all slices are done"
        )
    click.echo("\n".join(lines), err=True)


@click.command()
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


def register(group: click.Group) -> None:
    group.add_command(run)
    group.add_command(merge)
