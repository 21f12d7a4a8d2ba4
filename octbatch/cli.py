"""The `octbatch` command. Thin: each command builds a config, calls one library function, renders."""

from __future__ import annotations

import json

import click

from ._version import __version__
from .errors import ExitCode, OctbatchError

__all__ = ["cli", "main"]


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
_SUBCOMMAND_MODULES = ("cli_run", "cli_engines", "cli_bench", "cli_gpu", "cli_volumes", "cli_gate")


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
