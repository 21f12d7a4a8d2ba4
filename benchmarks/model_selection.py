"""Model v2 selection (engines/README.md): the architecture/size table and the learning curve.

Trains each candidate network with the shipped recipe (``octbatch.train.DEFAULTS``) and records its
validation-patient metrics (the only numbers a choice may use) and its ONNX Runtime CPU speed; then the
default network on fractions of the training scans (the learning curve). Report-only scans are
evaluated by ``train`` for the card, never read here.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/model_selection.py ../shared/data/oct2017 --out /tmp/sel
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from octbatch.training import train

CANDIDATES = {
    "small (16/32/64/128)": dict(widths=(16, 32, 64, 128)),
    "medium (24/48/96/192)": dict(widths=(24, 48, 96, 192)),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--fractions", default="0.25,0.5")
    ap.add_argument("--sizes", default="0,1", help="indices of CANDIDATES to train ('' for none)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    kw = {"epochs": a.epochs} if a.epochs else {}
    if a.sizes:
        f = out / "model_sizes.json"
        sizes = json.loads(f.read_text()) if f.exists() else {}
        for k, (name, cfg) in enumerate(CANDIDATES.items()):
            if str(k) not in a.sizes.split(","):
                continue
            m = train(
                a.data,
                out / f"size{k}.onnx",
                report_dir=out / f"size{k}",
                log=lambda s, n=name: print(f"[{n}] {s}", flush=True),
                **cfg,
                **kw,
            )
            v = m["evaluation"]["validation"]
            sizes[name] = {
                "model": f"size{k}.onnx",
                "parameters": m["parameters"],
                "val_accuracy": v["accuracy"],
                "val_macro_f1": v["macro_f1"],
                "val_balanced_accuracy": v["balanced_accuracy"],
                "img_per_s": m["speed"]["img_per_s_median"],
                "train_seconds": m["train_seconds"],
                "best_epoch": m["settings"]["best_epoch"],
            }
            (out / "model_sizes.json").write_text(json.dumps(sizes, indent=1))
    f = out / "learning_curve.json"
    curve = json.loads(f.read_text()) if f.exists() else {}
    for frac in (float(f) for f in a.fractions.split(",") if f):
        m = train(
            a.data,
            out / f"frac{frac}.onnx",
            train_fraction=frac,
            benchmark=False,
            evaluate_report_only=False,
            log=lambda s, f=frac: print(f"[fraction {f}] {s}", flush=True),
            **kw,
        )
        v = m["evaluation"]["validation"]
        curve[str(frac)] = {
            "train_scans": sum(m["split"]["counts"]["train"].values()),
            "val_accuracy": v["accuracy"],
            "val_macro_f1": v["macro_f1"],
            "val_balanced_accuracy": v["balanced_accuracy"],
        }
        (out / "learning_curve.json").write_text(json.dumps(curve, indent=1))


if __name__ == "__main__":
    main()
