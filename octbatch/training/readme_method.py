"""The card's sections on method and limits: preprocessing, the experiments (width, size, learning curve,
candidates), what limits the model, training, speed, how to reproduce it, what it is not fit for."""

from __future__ import annotations

from collections.abc import Callable

from .readme_tables import f

__all__ = ["METHOD_SECTIONS"]


def _preprocessing(a: Callable[[str], None], _L: list[str], metrics: dict, x: dict) -> None:
    """The preprocessing rule and the augmentation."""
    s = metrics["settings"]
    pre = metrics["preprocessing"]
    a("## Preprocessing: how a scan of any width reaches the network")
    a("")
    rule = pre["resize"]
    a(
        f'Stored in the model (`octbatch.preprocessing`) and used by training and every decoder alike: `resize = "{rule}"`, '
        f"{pre['input_size'][0]} x {pre['input_size'][1]}, 1 channel, area interpolation, `x = (u8/255 - {pre['mean'][0]}) / {pre['std'][0]}`."
    )
    if rule == "stretch":
        a("The whole scan is resized to the square input: every A-scan column of the B-scan is kept, and")
        a("scans of 512, 768, 1024 and 1536 A-scans over one scan length show the retina at one scale.")
    else:
        a(
            "The largest centred square of the scan is resized to the input: equal pixel spacing is assumed across widths."
        )
    lat = s.get("lateral_scale")
    if s.get("density"):
        lo, hi = s["density"]
        a(
            f"Training shows every scan at a **random A-scan density**: as if acquired with a width drawn log-uniformly from {lo} to {hi}"
        )
        a(
            "A-scans (a narrower or wider crop of the scan, resized), so no class can be recognised by the density it happened to be"
        )
        a(
            "acquired with (in this sample CNV is far more often 768/1536 px wide than DRUSEN). On top: flips, small rotations and"
        )
        a("zoom, gamma/contrast/brightness and blur.")
    elif lat:
        a(
            f"Training adds a random **lateral scale** factor (log-uniform in {lat}) on top of flips, small rotations, gamma/contrast/brightness and blur,"
        )
        a("so the network also sees the retina at other A-scan densities than the ones in the training sample.")
    else:
        a("No lateral-scale augmentation.")
    a("")


def _width(a: Callable[[str], None], _L: list[str], metrics: dict, x: dict) -> None:
    """The width experiment."""
    width = x["width"]
    if width:
        a("### The width experiment (evidence for the rule)")
        a("")
        a(
            "Each rule trained on the non-report-only 512-px-wide scans only and evaluated through the inference path on the"
        )
        a(
            "512-px validation patients and on every non-report-only scan of the held-out widths 768 and 1536 (1.5x and 3x the"
        )
        a("A-scan density; the report-only 1024-px scans were not looked at). From `benchmarks/width_experiment.json`:")
        a("")
        a("| rule | validation (512 px) acc / bal. acc | held-out widths acc / bal. acc | 768 px acc | 1536 px acc |")
        a("| --- | --- | --- | ---: | ---: |")
        for name, r in width.items():
            v, h = r.get("validation", {}), r.get("width_holdout", {})
            bw = h.get("accuracy_by_width", {})
            a(
                f"| {name} | {f(v.get('accuracy'))} / {f(v.get('balanced_accuracy'))} | {f(h.get('accuracy'))} / {f(h.get('balanced_accuracy'))} | "
                f"{f(bw.get('768', {}).get('accuracy'))} | {f(bw.get('1536', {}).get('accuracy'))} |"
            )
        a("")


def _sizes(a: Callable[[str], None], _L: list[str], metrics: dict, x: dict) -> None:
    """Architecture and size."""
    sizes = x["sizes"]
    if sizes:
        a("## Architecture and size (accuracy against speed)")
        a("")
        a(
            "Same data, rule and schedule; accuracy on the validation patients (the selection set); speed: ONNX Runtime, CPU,"
        )
        a(
            "batch 64, 2 threads, median of 20 batches in a fresh process, on this project's 2-core VM. From `benchmarks/model_sizes.json`:"
        )
        a("")
        a("| network | parameters | validation acc | validation macro F1 | ORT img/s (CPU, 2 threads) |")
        a("| --- | ---: | ---: | ---: | ---: |")
        for name, r in sizes.items():
            a(
                f"| {name} | {r['parameters']:,} | {f(r['val_accuracy'])} | {f(r['val_macro_f1'])} | {r['img_per_s']:,.0f} |"
            )
        a("")


def _curve(a: Callable[[str], None], _L: list[str], metrics: dict, x: dict) -> None:
    """The learning curve."""
    curve = x["curve"]
    if curve:
        a("## Learning curve (is more data the limit?)")
        a("")
        a(
            "Same recipe on a random fraction of the training scans; validation patients fixed. From `benchmarks/learning_curve.json`:"
        )
        a("")
        a("| training fraction | training scans | validation acc | validation macro F1 |")
        a("| ---: | ---: | ---: | ---: |")
        for frac, r in sorted(curve.items(), key=lambda kv: float(kv[0])):
            a(f"| {float(frac):.2f} | {r['train_scans']} | {f(r['val_accuracy'])} | {f(r['val_macro_f1'])} |")
        a("")


def _candidates(a: Callable[[str], None], _L: list[str], metrics: dict, x: dict) -> None:
    """Every recipe that saw a report-only set."""
    candidates = x["candidates"]
    if candidates:
        a("## Every recipe that saw a report-only set (honesty table)")
        a("")
        a(candidates["note"] + " From `benchmarks/v2_candidates.json`:")
        a("")
        a(
            "| recipe | validation acc / bal. | test-v3 acc / bal. | test-v3 urgent sens. / spec. | test+val acc / bal. |"
        )
        a("| --- | --- | --- | --- | --- |")
        for name, r in candidates["candidates"].items():
            v, t, tv = r["validation"], r["test_v3"], r["test_val"]
            a(
                f"| {name} | {f(v['accuracy'])} / {f(v['balanced_accuracy'])} | {f(t['accuracy'])} / {f(t['balanced_accuracy'])} | "
                f"{f(t['urgent_sensitivity'])} / {f(t['urgent_specificity'])} | {f(tv['accuracy'])} / {f(tv['balanced_accuracy'])} |"
            )
        a("")


def _limits(a: Callable[[str], None], _L: list[str], metrics: dict, x: dict) -> None:
    """What limits it."""
    ev = metrics["evaluation"]
    a("## What limits it, and what would help")
    a("")
    t = ev.get("test_v3", {})
    a(
        f"The targets (accuracy >= 0.966, macro recall >= 0.95, urgent sensitivity >= 0.97 on test-v3) are "
        f"{'met' if t.get('accuracy', 0) >= 0.966 else 'not met'}: accuracy {f(t.get('accuracy'))}, macro recall {f(t.get('balanced_accuracy'))}, "
        f"urgent sensitivity {f((t.get('referral') or {}).get('urgent_sensitivity'))}. The evidence on what limits it:"
    )
    a("")
    a(
        "* **Width shift.** On test-v3 the typical error is DRUSEN called CNV and NORMAL called DME/DRUSEN, on 1024-px scans, a width"
    )
    a(
        "  with no training scan; the 52 test-v3 scans 1536 px wide (a width that is in training) score higher (table above), and"
    )
    a(
        "  the report-only test+val scans (512/768 px) score far higher. The width experiment shows augmentation recovers much but"
    )
    a(
        "  not all of a width shift. What would help most: training scans at 1024 px (any labelled 1024-px Spectralis scans)."
    )
    a(
        "* **Data size.** The learning curve still rises from half to all of the training scans, so more DME/DRUSEN patients would help;"
    )
    a(
        "  the literature's 96-99 % comes from ~108,000 training scans and ImageNet-pretrained networks (not downloadable here)."
    )
    a(
        "* **Small validation set** (92 scans of held-out patients): selection and calibration rest on it; one scan moves a recall by 3 points."
    )
    a("")


def _training(a: Callable[[str], None], _L: list[str], metrics: dict, x: dict) -> None:
    """The training recipe."""
    s = metrics["settings"]
    a("## Training")
    a("")
    a(
        f"AdamW (lr {s['lr']}, weight decay {s['weight_decay']}), one-cycle schedule, {s['epochs']} epochs, batch {s['batch_size']}, "
        f"label smoothing {s['label_smoothing']}, class-balanced sampling; the epoch with the best validation macro F1 is kept "
        f"(**epoch {s['best_epoch']}**). Curves: [`training_curves.png`](training_curves.png)."
    )
    a("")
    a("![training curves](training_curves.png)")
    a("")


def _speed(a: Callable[[str], None], _L: list[str], metrics: dict, x: dict) -> None:
    """Speed."""
    sp_ = metrics.get("speed")
    if sp_:
        a("## Speed")
        a("")
        a(
            f"ONNX Runtime CPU, batch {sp_['batch_size']}, {sp_['threads']} threads, {sp_.get('process', '')} process: "
            f"**{sp_['img_per_s_median']:,.0f} img/s** median ({sp_['ms_per_batch_median']} ms per batch; best {sp_['img_per_s_best']:,.0f})."
        )
        a("")


def _reproduce(a: Callable[[str], None], _L: list[str], metrics: dict, x: dict) -> None:
    """How to reproduce."""
    a("## Reproduce")
    a("")
    a("```")
    a("octbatch train ../shared/data/oct2017 --out octbatch/models/oct4-default.onnx --report-dir engines")
    a("python benchmarks/width_experiment.py ../shared/data/oct2017 --out /tmp/width   # the width experiment")
    a("python -m octbatch.train_card engines/metrics.json --width benchmarks/width_experiment.json \\")
    a("    --sizes benchmarks/model_sizes.json --curve benchmarks/learning_curve.json \\")
    a("    --candidates benchmarks/v2_candidates.json --out engines/README.md")
    a("```")
    a("")
    a("Seeded (torch, NumPy, augmentation); another torch version, thread count or CPU may change a few predictions.")
    a("")


def _not_fit(a: Callable[[str], None], _L: list[str], metrics: dict, x: dict) -> None:
    """What the model is not fit for."""
    a("## What this model is not fit for")
    a("")
    a("* **Not a medical device, not for diagnosis** or any clinical use, and not validated in any clinical sense.")
    a(
        "* **One device**: Heidelberg Spectralis B-scans as exported in the Kermany dataset (8-bit JPEG). Other devices, other"
    )
    a(
        "  export pipelines, en-face images and other pathologies are out of scope; the model always answers one of four classes"
    )
    a("  (octbatch's gate flags images that do not look like B-scans).")
    a(
        "* **Duplicates and overlap**: the sample comes from public GitHub copies; most CNV/NORMAL scans have no patient id,"
    )
    a("  so a held-out patient may still have other scans of their eye on the training side under a renamed file.")
    a("* **Width shift**: the official test scans are 1024 px wide and no training scan is; read the per-width tables.")


METHOD_SECTIONS = (
    _preprocessing,
    _width,
    _sizes,
    _curve,
    _candidates,
    _limits,
    _training,
    _speed,
    _reproduce,
    _not_fit,
)
