"""`octbatch volumes`: registered on the main group by cli.py. Imports only click at top level."""

from __future__ import annotations

import click

__all__ = ["volumes", "register"]


@click.command()
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Per-volume Parquet table to write.")
@click.option("--min-frames", type=int, default=1, help="Frames a finding needs (predicted as that class).")
@click.option("--min-prob", type=float, default=0.0, help="Confidence a frame needs to count for a finding.")
@click.option(
    "--referral",
    multiple=True,
    help="CLASS=urgent|routine|observation (repeatable or comma-separated) [default: CNV, DME urgent; DRUSEN routine; NORMAL observation].",
)
def volumes(results, out, min_frames, min_prob, referral):
    """One row per volume (DICOM series, TIFF stack, or Kermany patient) of a results table:
    frame counts, per-class max and mean probability, frames predicted abnormal, the worst finding
    and a referral level.

    \b
    Example:
      octbatch volumes results.parquet --out volumes.parquet --min-frames 2
    """
    from .config import split_csv
    from .volumes import write_volumes

    n = write_volumes(results, out, referral=split_csv(referral), min_frames=min_frames, min_prob=min_prob)
    click.echo(f"octbatch: wrote {n} volume row(s) to {out}", err=True)


def register(group: click.Group) -> None:
    group.add_command(volumes)
