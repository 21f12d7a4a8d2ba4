"""The shipped model's long card (engines/README.md), rendered from data, one function per section:
the metrics.json that ``octbatch train --report-dir`` writes, plus the width experiment and the
model-size comparison (their JSON outputs in benchmarks/). Nothing in the card's tables is typed by hand.

    python -m octbatch.train_card engines/metrics.json --width benchmarks/width_experiment.json \
        --sizes benchmarks/model_sizes.json --out engines/README.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .readme_method import METHOD_SECTIONS
from .readme_results import RESULT_SECTIONS

__all__ = ["render_card"]

_SECTIONS = RESULT_SECTIONS + METHOD_SECTIONS


def render_card(
    metrics: dict,
    *,
    width: dict | None = None,
    sizes: dict | None = None,
    curve: dict | None = None,
    candidates: dict | None = None,
) -> str:
    """engines/README.md from metrics.json and the experiment files, section by section."""
    L: list[str] = []
    x = {"width": width, "sizes": sizes, "curve": curve, "candidates": candidates}
    for section in _SECTIONS:
        section(L.append, L, metrics, x)
    return "\n".join(L) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m octbatch.train_card", description="Render the model card from metrics.json."
    )
    ap.add_argument("metrics")
    ap.add_argument("--width")
    ap.add_argument("--sizes")
    ap.add_argument("--curve")
    ap.add_argument("--candidates")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    load = lambda p: json.loads(Path(p).read_text()) if p else None  # noqa: E731
    Path(a.out).write_text(
        render_card(
            json.loads(Path(a.metrics).read_text()),
            width=load(a.width),
            sizes=load(a.sizes),
            curve=load(a.curve),
            candidates=load(a.candidates),
        ),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
