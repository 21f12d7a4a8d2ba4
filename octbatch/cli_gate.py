"""`octbatch train-gate`: train the OCT gate (octbatch.gate) and measure it.

Registered by octbatch.cli; imports only click at top level (torch loads when the command runs).
"""

from __future__ import annotations

import json

import click

__all__ = ["register", "train_gate"]


@click.command("train-gate")
@click.argument("oct_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("non_oct_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Gate ONNX file to write.")
@click.option(
    "--model",
    type=click.Path(dir_okay=False),
    envvar="OCTBATCH_MODEL",
    help="The classifier whose preprocessing the evaluation uses [default: the shipped model].",
)
@click.option("--seed", type=int, default=0)
@click.option("--epochs", type=int, default=None, help="Training epochs [default: the shipped gate's].")
@click.option("--threads", type=int, default=0, help="Torch and decoding threads; 0 = all cores.")
@click.option(
    "--holdout",
    is_flag=True,
    help="Also train one gate per held-out non-OCT source and category and report their catch rates (minutes more).",
)
@click.option(
    "--metrics",
    type=click.Path(dir_okay=False),
    help="Also write the metrics as JSON here (e.g. engines/gate-metrics.json).",
)
def train_gate(oct_dir, non_oct_dir, out, model, seed, epochs, threads, holdout, metrics):
    """Train the OCT gate on real B-scans (OCT_DIR, train/unknown splits only) against non-OCT images
    (NON_OCT_DIR) and synthetic negatives; write it with its threshold; print the measured rates.

    Needs the `train` extra (torch, onnx). A few CPU minutes; rerun it after the classifier's
    preprocessing changes (the evaluation uses the classifier's crop/resize rule).

    \b
    Example:
      octbatch train-gate ../shared/data/oct2017 ../shared/data/non-oct \\
          --out octbatch/models/oct-gate-v1.onnx --holdout --metrics engines/gate-metrics.json
    """
    from .config import default_threads
    from .training.gate_eval import train_gate_file

    kw = {}
    if epochs is not None:
        kw["epochs"] = epochs
    m = train_gate_file(
        oct_dir,
        non_oct_dir,
        out,
        seed=seed,
        threads=threads or default_threads(),
        model=model,
        holdout=holdout,
        log=lambda s: click.echo(s, err=True),
        **kw,
    )
    text = json.dumps(m, indent=1, default=str)
    if metrics:
        with open(metrics, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    click.echo(text)


def register(group: click.Group) -> None:
    group.add_command(train_gate)
