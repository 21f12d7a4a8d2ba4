"""The accuracy guard: every engine is compared with its source model on real scans before it is kept.

The reference is the source ONNX file run by ONNX Runtime at fp32. An int8 engine agreeing less
often than ``min_agreement`` is refused (unless forced). ``throughput`` is the timer that decides
whether int8 is worth having (--precision best and the ONNX Runtime int8 speed check).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import OctbatchError
from ..timing import repeat_timed
from .scans import iter_scan_batches

if TYPE_CHECKING:
    from ..model import ModelInfo

__all__ = [
    "BEST_MIN_SPEEDUP",
    "accuracy_guard",
    "judge",
    "guard_line",
    "throughput",
    "speed_batch",
    "int8_speed_check",
]

Log = Callable[[str], None]

# int8 must beat the float engine by this much to be picked by --precision best (noise margin).
BEST_MIN_SPEEDUP = 1.05


def accuracy_guard(
    model_info: ModelInfo, backend: str, engine_path: str, precision: str, entries: Sequence, *, batch: int = 64
) -> dict:
    """Compare the engine with the source model (ONNX Runtime fp32, unoptimized file) on real scans."""
    from ..backends import make_runner
    from ..backends.onnxrt import OnnxRuntimeRunner

    ref_p, eng_p, labels = [], [], []
    with (
        OnnxRuntimeRunner(model_info, path=model_info.path, precision="fp32") as ref,
        make_runner(backend, model_info, engine_path=engine_path, precision=precision) as eng,
    ):
        for x, y in iter_scan_batches(entries, model_info.preprocessing, batch):
            ref_p.append(ref.infer(x))
            eng_p.append(eng.infer(x))
            labels.extend(y)
    if not ref_p:
        raise OctbatchError(
            "none of the guard scans could be decoded", "Pass --guard-archive or --calib with readable JPEG scans."
        )
    r, e = np.concatenate(ref_p), np.concatenate(eng_p)
    return _guard_numbers(r, e, labels, list(model_info.classes))


def _guard_numbers(ref: np.ndarray, eng: np.ndarray, labels: Sequence, classes: list) -> dict:
    rt, et = ref.argmax(1), eng.argmax(1)
    out = {
        "n": int(len(rt)),
        "agreement": float((rt == et).mean()),
        "max_abs_prob_diff": float(np.abs(ref - eng).max()),
        "mean_abs_prob_diff": float(np.abs(ref - eng).mean()),
    }
    idx = {c: i for i, c in enumerate(classes)}
    known = np.array([idx.get(lbl, -1) if lbl is not None else -1 for lbl in labels])
    mask = known >= 0
    if mask.any():
        out["labelled"] = int(mask.sum())
        out["accuracy_reference"] = float((rt[mask] == known[mask]).mean())
        out["accuracy_engine"] = float((et[mask] == known[mask]).mean())
    return out


def judge(
    info: ModelInfo,
    backend: str,
    engine: str,
    precision: str,
    *,
    profile: Sequence[int],
    calib_entries: Sequence | None,
    guard_entries: Sequence,
    min_agreement: float,
    force: bool,
    log: Log,
) -> dict:
    """Run the guard on a freshly built engine and decide: the guard's report (refused: raises)."""
    log(
        f"accuracy guard: comparing {precision} engine with the source model (ONNX Runtime fp32) on {len(guard_entries)} scans"
    )
    g = accuracy_guard(info, backend, engine, precision, guard_entries, batch=min(profile[2], 64))
    g["min_agreement"] = min_agreement
    g["held_out"] = not calib_entries or not ({e.abspath for e in guard_entries} & {e.abspath for e in calib_entries})
    g["passed"] = g["agreement"] >= min_agreement
    log(guard_line(g))
    if not g["passed"]:
        if precision == "int8" and not force:
            raise OctbatchError(
                f"the int8 engine agrees with the fp32 model on only {g['agreement']:.1%} of {g['n']} scans "
                f"(threshold {min_agreement:.1%}; max probability difference {g['max_abs_prob_diff']:.3f}); engine not kept",
                "Calibrate on more, or more representative, scans (--calib, --calib-size), use fp32/fp16, or pass --force to keep it anyway.",
            )
        g["forced"] = bool(force)
        log(f"warning: {precision} engine is below the agreement threshold; kept" + (" (--force)" if force else ""))
    if precision == "int8" and backend == "onnxruntime":
        int8_speed_check(info, engine, guard_entries, profile[1], g, log)
    return g


def guard_line(g: dict) -> str:
    s = f"guard: top-1 agreement {g['agreement']:.2%} on {g['n']} scans, max |dp| {g['max_abs_prob_diff']:.4f}"
    if "accuracy_reference" in g:
        s += f"; accuracy fp32 {g['accuracy_reference']:.2%} vs engine {g['accuracy_engine']:.2%} ({g['labelled']} labelled)"
    return s


def throughput(runner, x: np.ndarray, *, warmup: int = 2, repeats: int = 5) -> float:
    """Median images/s of ``runner`` on batch ``x`` (what --precision best compares)."""
    timed = repeat_timed(lambda: (runner.infer(x), len(x))[1], min_seconds=0.0, repeats=repeats, warmup=warmup)
    return float(np.median([n / dt for n, dt in timed]))


def speed_batch(info: ModelInfo, entries: Sequence | None, batch: int) -> np.ndarray:
    """The batch --precision best times the candidates on: real scans, else seeded noise."""
    x = next((b for b, _ in iter_scan_batches(entries, info.preprocessing, batch)), None) if entries else None
    if x is None:
        spec = info.preprocessing
        x = np.random.default_rng(0).normal(0, 1, (batch, spec.channels, spec.height, spec.width)).astype(np.float32)
    return x


def int8_speed_check(info: ModelInfo, engine: str, entries: Sequence, batch: int, g: dict, log: Log) -> None:
    """int8 is only worth having if it is faster here: time it against the fp32 source model as
    `run` loads it, on the same batch, and put the verdict into the guard's report."""
    from ..backends.onnxrt import OnnxRuntimeRunner

    x = next((b for b, _ in iter_scan_batches(entries, info.preprocessing, batch)), None)
    if x is None:
        return
    with (
        OnnxRuntimeRunner(info, path=info.path, precision="fp32") as ref,
        OnnxRuntimeRunner(info, path=engine, precision="int8") as eng,
    ):
        speeds = {"fp32": throughput(ref, x), "int8": throughput(eng, x)}
    ratio = speeds["int8"] / speeds["fp32"]
    g["img_per_s"] = {k: round(v, 1) for k, v in speeds.items()}
    g["speed_batch"] = int(len(x))
    g["faster_than_fp32"] = bool(ratio >= BEST_MIN_SPEEDUP)
    if g["faster_than_fp32"]:
        log(
            f"speed: int8 {speeds['int8']:,.0f} img/s vs fp32 {speeds['fp32']:,.0f} img/s at batch {len(x)} ({ratio:.2f}x)"
        )
    else:
        log(
            f"warning: int8 is NOT faster than fp32 on this machine ({speeds['int8']:,.0f} vs {speeds['fp32']:,.0f} img/s at batch {len(x)}, "
            f"{ratio:.2f}x): prefer the fp32 engine (--precision best picks for you)"
        )
