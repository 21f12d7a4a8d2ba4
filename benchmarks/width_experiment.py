"""The width experiment of engines/README.md: which preprocessing rule carries a model across scan widths?

Trains the default network once per (resize rule, lateral-scale augmentation) on the non-report-only
scans of ONE width family (512 px wide) and evaluates each exported model, through the inference path,
on the validation patients (512-wide) and on every non-report-only scan of the held-out widths
(768 and 1536 px: 1.5x and 3x the A-scan density; the report-only 1024-wide scans are never looked at).

    python benchmarks/width_experiment.py ../shared/data/oct2017 --out /tmp/width --epochs 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from octbatch.training import train

CONFIGS = {
    "center_crop": dict(resize="center_crop", lateral_scale=None),
    "center_crop+lateral": dict(resize="center_crop", lateral_scale=(0.6, 1.6)),
    "center_crop+density": dict(resize="center_crop", lateral_scale=None, density=(512, 1536)),
    "stretch": dict(resize="stretch", lateral_scale=None),
    "stretch+lateral": dict(resize="stretch", lateral_scale=(0.6, 1.6)),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--holdout", default="768,1536")
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    held = tuple(int(w) for w in a.holdout.split(","))
    f = out / "width_experiment.json"
    results = json.loads(f.read_text()) if f.exists() else {}
    for name, cfg in CONFIGS.items():
        if a.only and name not in a.only.split(","):
            continue
        t = time.perf_counter()
        m = train(
            a.data,
            out / f"{name}.onnx",
            epochs=a.epochs,
            holdout_widths=held,
            benchmark=False,
            evaluate_report_only=False,
            log=lambda s, n=name: print(f"[{n}] {s}", flush=True),
            **cfg,
        )
        ev = m["evaluation"]
        results[name] = {
            "seconds": round(time.perf_counter() - t, 1),
            "best_epoch": m["settings"]["best_epoch"],
            **{
                k: {
                    x: ev[k][x]
                    for x in ("n", "accuracy", "balanced_accuracy", "macro_f1", "accuracy_by_width", "per_class")
                }
                for k in ("validation", "width_holdout")
                if k in ev
            },
        }
        (out / "width_experiment.json").write_text(json.dumps(results, indent=1))
        print(
            json.dumps(
                {
                    name: {
                        k: (v["accuracy"], v["balanced_accuracy"]) if isinstance(v, dict) and "accuracy" in v else v
                        for k, v in results[name].items()
                    }
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
