"""`octbatch verify-preproc`: does the DALI path feed the model what the CPU path feeds it?

Registered by octbatch.cli; imports only click at top level (DALI loads when the command runs).
"""

from __future__ import annotations

import json

import click

__all__ = ["register", "verify_preproc"]


@click.command("verify-preproc")
@click.argument("archive", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--model",
    type=click.Path(dir_okay=False),
    envvar="OCTBATCH_MODEL",
    help="ONNX classifier [default: the shipped OCT model].",
)
@click.option("--limit", type=int, default=512, help="Compare the first N scans (in discovery order).")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "gpu"]),
    default="auto",
    help="Where DALI decodes: auto = the GPU (mixed) when one is present, else the CPU.",
)
@click.option("--batch-size", "-b", type=int, default=64)
@click.option("--threads", "-j", type=int, default=0, help="Decode and inference threads; 0 = all cores.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
def verify_preproc(archive, model, limit, device, batch_size, threads, as_json):
    """Compare the DALI decoder's model input and predictions with the CPU decoder's on ARCHIVE.

    Reports the largest, mean and 99.9th-percentile uint8 pixel difference, the model's top-1
    agreement, and every file that decodes in one path but not the other. Needs the `dali` extra.

    \b
    Example:
      octbatch verify-preproc /archive --limit 512
    """
    from .gpu_path import verify_preprocessing

    r = verify_preprocessing(archive, model=model, limit=limit, batch_size=batch_size, device=device, threads=threads)
    if as_json:
        click.echo(json.dumps(r, indent=1, default=str))
        return
    lines = [
        f"DALI ({r['dali_device']}) vs CPU decoder on {r['files']} file(s) of {archive}; {r['compared']} decoded by both"
    ]
    if r["compared"]:
        lines += [
            f"  pixel difference (0-255): max {r['pixel_max_diff']}, mean {r['pixel_mean_diff']:.3f}, 99.9th percentile {r['pixel_p999_diff']:.1f}",
            f"  top-1 agreement {r['top1_agreement'] * 100:.2f}%, largest probability difference {r['prob_max_diff']:.4f}",
        ]
    lines.append(f"  files read by one path only: {r['status_mismatches']}")
    for m in r["mismatched"]:
        lines.append(f"    {m['path']}: cpu={m['cpu'] or 'ok'} | dali={m['dali'] or 'ok'}")
    click.echo("\n".join(lines))


def register(group: click.Group) -> None:
    group.add_command(verify_preproc)
