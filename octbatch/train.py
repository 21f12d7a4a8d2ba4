"""Train the small OCT classifier that ships as ``octbatch/models/oct4-default.onnx``.

One entry point, ``train(data_dir, out)``: read the scans (``manifest.csv`` when the folder has one,
else discovery + Kermany file names), split them patient-wise, preprocess every scan once with the
very decoder inference uses (``octbatch.decode.cpu.decode_image``), train a small ResNet-like CNN in
torch, export ONNX with octbatch metadata, and evaluate the exported file through ONNX Runtime the
way ``octbatch run`` would.

Rules the split follows (see engines/README.md):

* rows whose manifest ``split_hint`` is ``test`` or ``val`` are *report-only*: never trained on, never
  used to pick an epoch or tune anything; the patients they come from are left out of training too,
  and so is any other scan that is a near-duplicate of one of them (same pixels after preprocessing);
* the remaining scans with a patient id are split patient-wise into train and validation (a patient
  id never sits on both sides, across classes too); scans without a patient id (renamed copies)
  can only go to training, and are dropped where they near-duplicate a validation scan;
* DME and DRUSEN are scarce, so training draws class-balanced batches.

torch (and onnx) are imported inside functions only: ``import octbatch`` must never load them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .archive import CLASS_NAMES, discover
from .errors import OctbatchError
from .preprocess import Preprocessing, normalize_into

__all__ = [
    "Record",
    "train",
    "load_records",
    "split_records",
    "decode_cache",
    "evaluate_onnx",
    "classification_metrics",
    "write_report",
    "draw_confusion_png",
    "benchmark_onnx",
    "DEFAULTS",
]

# Report-only manifest hints: never trained on, never used to select or tune anything.
# test-v3 is Kermany's official 1,000-scan test set; test/val are the Kaggle copy's splits.
REPORT_HINTS = ("test-v3", "test", "val")
# The sets evaluated once, at the end, on the exported model (name -> split hints).
REPORT_SETS = {"test_v3": ("test-v3",), "test_val": ("test", "val")}
# Training settings of the shipped model; `octbatch train` with no options reproduces it.
DEFAULTS = dict(
    epochs=40,
    batch_size=64,
    lr=3e-3,
    weight_decay=5e-4,
    label_smoothing=0.05,
    val_fraction=0.25,
    widths=(16, 32, 64, 128),
    stem=16,
    near_dup=0.97,
    resize="center_crop",
    lateral_scale=(0.6, 1.6),
    density=(512, 1536),  # chosen by the width experiment (engines/README.md)
    input_size=128,
)


@dataclass
class Record:
    path: str  # absolute path
    rel: str  # relative to the data folder
    label: str
    patient_id: str  # "" when unknown
    split_hint: str = "unknown"
    width: int = 0
    height: int = 0
    sha256: str = ""
    role: str = ""  # train | val | report | excluded (set by split_records)
    why: str = ""  # why a record was excluded


# ----------------------------------------------------------------------------------------- data


def load_records(data_dir: str | os.PathLike) -> list[Record]:
    """Every labelled scan under ``data_dir``: from ``manifest.csv`` when present, else discovery."""
    root = Path(data_dir)
    if not root.is_dir():
        raise OctbatchError(
            f"training data {root} is not a directory",
            "Give the folder that holds the class folders (e.g. CNV/, DME/, ...).",
        )
    manifest = root / "manifest.csv"
    records: list[Record] = []
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                label = (row.get("label") or "").strip()
                if label not in CLASS_NAMES:
                    continue
                rel = row["path"]
                records.append(
                    Record(
                        path=str(root / rel),
                        rel=rel,
                        label=label,
                        patient_id=(row.get("patient_id") or "").strip(),
                        split_hint=(row.get("split_hint") or "unknown").strip() or "unknown",
                        width=int(row.get("width") or 0),
                        height=int(row.get("height") or 0),
                        sha256=row.get("sha256") or "",
                    )
                )
    else:
        for e in discover(root):
            if e.label is None:
                continue
            hint = "unknown"
            # A Kaggle-style layout (test/CNV/..., val/CNV/...) marks report-only scans by folder.
            top = e.path.split("/", 1)[0].lower()
            if top in REPORT_HINTS and "/" in e.path:
                hint = top
            records.append(
                Record(path=e.abspath, rel=e.path, label=e.label, patient_id=e.patient_id or "", split_hint=hint)
            )
    if not records:
        raise OctbatchError(
            f"no labelled scans found under {root}",
            "Name scans like CNV-1016042-1.jpeg or put them in class folders CNV/, DME/, DRUSEN/, NORMAL/.",
        )
    return records


def _read_one(path: str, spec: Preprocessing):
    from .decode.base import read_bytes
    from .decode.cpu import decode_image

    return decode_image(read_bytes(path), spec)


def decode_cache(records: Sequence[Record], spec: Preprocessing, *, threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Decode every scan once, exactly as inference does: (uint8 images (N,H,W), ok mask (N,)).
    Fills in ``width``/``height`` of records that lack them."""
    n = len(records)
    images = np.zeros((n, spec.height, spec.width), np.uint8)
    ok = np.zeros(n, bool)

    def work(i: int) -> None:
        try:
            img, (w, h) = _read_one(records[i].path, spec)
        except Exception:  # noqa: BLE001 - an unreadable scan is left out, never fatal
            return
        images[i] = img
        ok[i] = True
        if not records[i].width:
            records[i].width, records[i].height = w, h

    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(n)))
    else:
        for i in range(n):
            work(i)
    return images, ok


def _dup_features(images: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm 32x32 thumbnails: their dot product is a near-duplicate score."""
    import cv2

    f = np.stack([cv2.resize(im, (32, 32), interpolation=cv2.INTER_AREA) for im in images]).reshape(len(images), -1)
    f = f.astype(np.float32)
    f -= f.mean(axis=1, keepdims=True)
    f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-6
    return f


def _max_similarity(feats: np.ndarray, rows: np.ndarray, against: np.ndarray) -> np.ndarray:
    if len(rows) == 0 or len(against) == 0:
        return np.full(len(rows), -1.0, np.float32)
    return (feats[rows] @ feats[against].T).max(axis=1)


def split_records(
    records: Sequence[Record],
    *,
    val_fraction: float = 0.25,
    seed: int = 0,
    images: np.ndarray | None = None,
    near_dup: float = 0.97,
) -> dict:
    """Assign each record a role (train/val/report/excluded), in place; returns a summary.

    Patients are grouped by id across classes and drawn for validation per class, rarest class
    first, until each class has about ``val_fraction`` of its scans that carry a patient id.
    """
    rng = np.random.default_rng(seed)
    report_patients = {r.patient_id for r in records if r.split_hint in REPORT_HINTS and r.patient_id}
    for r in records:
        r.role, r.why = "", ""
        if r.split_hint in REPORT_HINTS:
            r.role = "report"
        elif r.patient_id and r.patient_id in report_patients:
            r.role, r.why = "excluded", "patient also in the report-only set"

    by_patient: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if not r.role and r.patient_id:
            by_patient[r.patient_id].append(r)
    class_n = Counter(r.label for r in records if not r.role)
    rank = {c: i for i, c in enumerate(sorted(CLASS_NAMES, key=lambda c: (class_n.get(c, 0), c)))}
    with_pid = Counter(r.label for rs in by_patient.values() for r in rs)
    target = {c: val_fraction * with_pid.get(c, 0) for c in CLASS_NAMES}
    in_val = Counter()
    # Each patient is filed under the rarest class among its scans; rarest classes are drawn first.
    groups: dict[str, list[str]] = defaultdict(list)
    for pid, rs in by_patient.items():
        groups[min((r.label for r in rs), key=lambda c: rank[c])].append(pid)
    val_patients: set[str] = set()
    for c in sorted(groups, key=lambda c: rank[c]):
        pids = sorted(groups[c])
        rng.shuffle(pids)
        for pid in pids:
            if in_val[c] + 0.5 * sum(r.label == c for r in by_patient[pid]) > target[c]:
                continue
            val_patients.add(pid)
            for r in by_patient[pid]:
                in_val[r.label] += 1
    for r in records:
        if not r.role:
            r.role = "val" if r.patient_id in val_patients else "train"

    n_dups = 0
    if images is not None and near_dup < 1.0:
        # Renamed copies and re-encoded scans escape the id rules; their pixels do not.
        feats = _dup_features(images)
        roles = np.array([r.role for r in records])
        held = np.flatnonzero((roles == "report") | (roles == "val"))
        cand = np.flatnonzero(roles == "train")
        sim = _max_similarity(feats, cand, held)
        for i, s in zip(cand, sim):
            if s > near_dup:
                records[i].role, records[i].why = "excluded", f"near-duplicate of a held-out scan (similarity {s:.3f})"
                n_dups += 1
    counts = {
        role: dict(sorted(Counter(r.label for r in records if r.role == role).items()))
        for role in ("train", "val", "report", "excluded")
    }
    return {
        "counts": counts,
        "val_patients": len(val_patients),
        "train_patients": len({r.patient_id for r in records if r.role == "train" and r.patient_id}),
        "report_patients": len(report_patients),
        "excluded_report_patient_scans": sum(r.why.startswith("patient") for r in records),
        "excluded_near_duplicates": n_dups,
        "train_without_patient_id": sum(1 for r in records if r.role == "train" and not r.patient_id),
    }


# ---------------------------------------------------------------------------------------- model


def build_model(num_classes: int = 4, *, channels: int = 1, stem: int = 16, widths: Sequence[int] = (16, 32, 64, 128)):
    """A small ResNet: 3x3/2 stem + 2x2 max-pool (128 -> 32 px), one basic block per stage."""
    from ._deps import require

    torch = require("torch", purpose="training")
    nn = torch.nn

    def cbr(i, o, k=3, s=1):
        return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class Block(nn.Module):
        def __init__(self, i, o, stride):
            super().__init__()
            self.c1 = cbr(i, o, 3, stride)
            self.c2 = nn.Sequential(nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o))
            self.short = (
                None
                if (i == o and stride == 1)
                else nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))
            )
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.c2(self.c1(x))
            return self.act(y + (x if self.short is None else self.short(x)))

    class OctNet(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [cbr(channels, stem, 3, 2), nn.MaxPool2d(2)]
            c = stem
            for k, w in enumerate(widths):
                layers.append(Block(c, w, 1 if k == 0 else 2))
                c = w
            self.features = nn.Sequential(*layers)
            self.dropout = nn.Dropout(0.2)
            self.head = nn.Linear(c, num_classes)

        def forward(self, x):
            return self.head(self.dropout(self.features(x).mean(dim=(2, 3))))

    return OctNet()


def _augment(torch, x, gen):
    """Batched augmentation of float images in 0..1, (N,1,H,W): flip, scale/shift/rotate, brightness/contrast/gamma."""
    F = torch.nn.functional
    n = x.shape[0]

    def u(lo, hi):
        return torch.empty(n).uniform_(lo, hi, generator=gen)

    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    scale = u(0.85, 1.0)  # zoom in up to 15% (a random crop of 85-100% of the side)
    aspect = torch.exp(u(-0.08, 0.08))
    ang = u(-6, 6) * (math.pi / 180)
    sx, sy = scale * aspect.sqrt(), scale / aspect.sqrt()
    room_x, room_y = (1 - sx).clamp(min=0), (1 - sy).clamp(min=0)
    tx = u(-1, 1) * room_x
    ty = u(-1, 1) * room_y + u(-0.06, 0.06)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack(
        [torch.stack([sx * cos * flip, -sy * sin, tx], 1), torch.stack([sx * sin * flip, sy * cos, ty], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gamma = torch.exp(u(-0.25, 0.25)).view(n, 1, 1, 1)
    x = x.clamp(0, 1).pow(gamma)
    contrast = u(0.8, 1.2).view(n, 1, 1, 1)
    bright = u(-0.06, 0.06).view(n, 1, 1, 1)
    m = x.mean(dim=(2, 3), keepdim=True)
    x = ((x - m) * contrast + m + bright).clamp(0, 1)
    # Resolution/JPEG jitter stand-in: a light blur on some scans.
    blur = torch.rand(n, generator=gen) < 0.2
    if bool(blur.any()):
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k)
    return x


def _normalize_t(torch, x01, spec: Preprocessing):
    """(x - mean)/std on 0..1 images, the same affine as normalize_into (u8 * scale + offset)."""
    scale, offset = spec.channel_affine()
    # normalize_into computes u8 * (1/(255 std)) + (-mean/std); x01 = u8/255, so x01 * (1/std) - mean/std.
    return x01 * float(scale[0] * 255.0) + float(offset[0])


def _u8_to_input(torch, u8: np.ndarray, spec: Preprocessing):
    """uint8 (N,H,W) -> float32 NCHW with normalize_into itself (used for evaluation in torch)."""
    out = np.empty((len(u8), spec.channels, spec.height, spec.width), np.float32)
    normalize_into(out, u8, spec)
    return torch.from_numpy(out)


# -------------------------------------------------------------------------------------- metrics


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str], groups: Sequence | None = None
) -> dict:
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/F1/support, confusion matrix
    (rows = true class, columns = predicted), and accuracy per group (e.g. original scan width)."""
    yt = np.asarray(y_true, int)
    yp = np.asarray(y_pred, int)
    k = len(classes)
    cm = np.zeros((k, k), int)
    for t, p in zip(yt, yp):
        cm[t, p] += 1
    per = {}
    f1s, recs = [], []
    for i, c in enumerate(classes):
        tp = cm[i, i]
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        prec = tp / predicted if predicted else 0.0
        rec = tp / support if support else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[c] = {
            "precision": round(float(prec), 4),
            "recall": round(float(rec), 4),
            "f1": round(float(f1), 4),
            "support": support,
        }
        if support:
            f1s.append(f1)
            recs.append(rec)
    out = {
        "n": int(len(yt)),
        "accuracy": round(float((yt == yp).mean()) if len(yt) else 0.0, 4),
        "balanced_accuracy": round(float(np.mean(recs)) if recs else 0.0, 4),
        "macro_f1": round(float(np.mean(f1s)) if f1s else 0.0, 4),
        "per_class": per,
        "confusion_matrix": cm.tolist(),
    }
    if groups is not None:
        g = np.asarray(groups)
        by = {}
        for key in sorted(set(g.tolist()), key=lambda v: (str(type(v)), v)):
            m = g == key
            by[str(key)] = {
                "n": int(m.sum()),
                "accuracy": round(float((yt[m] == yp[m]).mean()), 4),
                "classes": dict(sorted(Counter(classes[t] for t in yt[m]).items())),
            }
        out["accuracy_by_width"] = by
    return out


def predict_onnx(model_path: str | os.PathLike, records: Sequence[Record], *, threads: int = 2, batch_size: int = 64):
    """Run the exported model the way inference does (CpuDecoder -> normalize_into -> ORT runner).
    Returns (kept record indices, probabilities (n, classes), original widths, decoded uint8 images)."""
    from .backends.onnxrt import OnnxRuntimeRunner
    from .decode.cpu import CpuDecoder
    from .model import load_model_info

    info = load_model_info(model_path)
    spec = info.preprocessing
    runner = OnnxRuntimeRunner(info, threads=threads)
    kept, probs, widths, images = [], [], [], []
    buf = np.empty((batch_size, spec.channels, spec.height, spec.width), np.float32)
    with CpuDecoder(spec, threads=threads) as dec, runner:
        for s in range(0, len(records), batch_size):
            chunk = records[s : s + batch_size]
            batch = dec.decode_batch([r.path for r in chunk])
            x = normalize_into(buf, batch.images, spec)
            p = runner.infer(x)
            for k, (good, size) in enumerate(zip(batch.ok, batch.sizes)):
                if good:
                    kept.append(s + k)
                    probs.append(p[k])
                    widths.append(int(size[0]))
                    images.append(batch.images[k].copy())
    k = len(info.classes)
    return (
        np.asarray(kept, int),
        np.asarray(probs, np.float64).reshape(-1, k),
        np.asarray(widths, int),
        np.asarray(images, np.uint8).reshape(-1, spec.height, spec.width),
    )


def evaluate_onnx(
    model_path: str | os.PathLike,
    records: Sequence[Record],
    *,
    threads: int = 2,
    batch_size: int = 64,
    temperature: float | None = None,
    predictions: list | None = None,
) -> dict:
    """Metrics of the exported model on ``records`` through the inference path: classification
    metrics, per-width accuracy, urgent-referral sensitivity/specificity, ECE and reliability bins.
    ``temperature``: the one baked into the model, to also report the uncalibrated ECE.
    ``predictions``: a list that receives one dict per scan (for the sample grid)."""
    from .calibration import expected_calibration_error, referral_metrics, reliability_bins, softmax
    from .model import load_model_info

    classes = list(load_model_info(model_path).classes)
    kept, probs, widths, images = predict_onnx(model_path, records, threads=threads, batch_size=batch_size)
    y_true = np.array([classes.index(records[i].label) for i in kept], int)
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    m = classification_metrics(y_true, y_pred, classes, groups=widths)
    m["referral"] = referral_metrics(y_true, y_pred, classes)
    m["ece"] = round(expected_calibration_error(probs, y_true), 4)
    m["reliability"] = reliability_bins(probs, y_true)
    if temperature:
        # The model outputs logits / T; T * log p recovers the logits up to a per-row constant.
        raw = softmax(np.log(np.clip(probs, 1e-12, None)) * float(temperature))
        m["ece_uncalibrated"] = round(expected_calibration_error(raw, y_true), 4)
        m["reliability_uncalibrated"] = reliability_bins(raw, y_true)
    m["mean_confidence"] = round(float(probs.max(axis=1).mean()), 4) if len(probs) else None
    if predictions is not None:
        for j, i in enumerate(kept):
            predictions.append(
                {
                    "rel": records[i].rel,
                    "true": records[i].label,
                    "pred": classes[int(y_pred[j])],
                    "confidence": float(probs[j].max()),
                    "p_true": float(probs[j][y_true[j]]),
                    "width": int(widths[j]),
                    "image": images[j],
                }
            )
    return m


def benchmark_onnx(model_path: str | os.PathLike, *, batch_size: int = 64, threads: int = 2, repeats: int = 20) -> dict:
    """Inference throughput of the ORT runner on one (random) batch: median and best img/s."""
    from .backends.onnxrt import OnnxRuntimeRunner
    from .model import load_model_info

    info = load_model_info(model_path)
    spec = info.preprocessing
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (batch_size, spec.height, spec.width), dtype=np.uint8)
    x = normalize_into(np.empty((batch_size, spec.channels, spec.height, spec.width), np.float32), u8, spec)
    times = []
    with OnnxRuntimeRunner(info, threads=threads) as runner:
        for _ in range(3):
            runner.infer(x)
        for _ in range(repeats):
            t = time.perf_counter()
            runner.infer(x)
            times.append(time.perf_counter() - t)
    return {
        "batch_size": batch_size,
        "threads": threads,
        "img_per_s_median": round(batch_size / float(np.median(times)), 1),
        "img_per_s_best": round(batch_size / float(np.min(times)), 1),
        "ms_per_batch_median": round(1000 * float(np.median(times)), 2),
    }


def _benchmark_fresh(model_path, *, threads: int = 2) -> dict:
    """benchmark_onnx in a fresh interpreter: torch's idle worker threads in this one would skew it."""
    import subprocess
    import sys

    code = (
        "import json,sys; from octbatch.train import benchmark_onnx; "
        f"print(json.dumps(benchmark_onnx(sys.argv[1], threads={int(threads)})))"
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        res = subprocess.run(
            [sys.executable, "-c", code, str(model_path)], capture_output=True, text=True, timeout=300, env=env
        )
        if res.returncode == 0:
            d = json.loads(res.stdout.strip().splitlines()[-1])
            d["process"] = "fresh"
            return d
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        pass
    d = benchmark_onnx(model_path, threads=threads)
    d["process"] = "training process"
    return d


# ---------------------------------------------------------------------------------------- export


def _export_onnx(
    torch, model, spec: Preprocessing, out: Path, classes: Sequence[str], card: str, *, temperature: float | None = None
) -> None:
    from ._deps import require
    from .model import META_CARD, META_CLASSES, META_OUTPUT, META_PREPROC

    onnx = require("onnx", purpose="exporting the trained model")
    model.eval()
    dummy = torch.zeros(1, spec.channels, spec.height, spec.width)
    tmp = out.with_name(out.name + ".tmp")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    m = onnx.load(str(tmp))  # weights are inline: the model is far below protobuf's 2 GiB limit
    meta = {
        META_CLASSES: json.dumps(list(classes)),
        META_PREPROC: spec.to_json(),
        META_OUTPUT: "logits",
        META_CARD: card,
    }
    if temperature is not None:
        # Informational: the division by T is already in the graph, so no backend applies it again.
        meta["octbatch.temperature"] = f"{temperature:.6f}"
    _set_metadata(onnx, m, meta)
    m.producer_name = "octbatch.train"
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp))
    os.replace(tmp, out)


def _set_metadata(onnx, m, values: dict) -> None:
    keep = [p for p in m.metadata_props if p.key not in values]
    del m.metadata_props[:]
    for p in keep:
        m.metadata_props.append(p)
    for k, v in values.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v


def update_card(path: str | os.PathLike, card: str) -> None:
    """Rewrite the model-card metadata of an exported model (weights untouched)."""
    from ._deps import require
    from .model import META_CARD

    onnx = require("onnx", purpose="editing model metadata")
    m = onnx.load(str(path))
    _set_metadata(onnx, m, {META_CARD: card})
    tmp = str(path) + ".tmp"
    onnx.save(m, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------- report


def draw_confusion_png(
    cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike, title: str = ""
) -> None:
    """A labelled confusion-matrix grid (rows: true class, columns: predicted) drawn with Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    cm = np.asarray(cm, int)
    k = len(classes)
    cell, left, top = 96, 130, 90
    w, h = left + k * cell + 20, top + k * cell + 60
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    try:
        font = ImageFont.load_default(size=16)
        small = ImageFont.load_default(size=13)
    except TypeError:  # old Pillow: fixed-size bitmap font
        font = small = ImageFont.load_default()
    if title:
        d.text((10, 8), title, fill="black", font=font)
    d.text((left + k * cell // 2 - 40, top - 48), "predicted", fill="black", font=font)
    d.text((10, top + k * cell // 2 - 30), "true", fill="black", font=font)
    row_sum = cm.sum(axis=1, keepdims=True).clip(min=1)
    frac = cm / row_sum
    for i in range(k):
        d.text((left + i * cell + 10, top - 24), classes[i], fill="black", font=small)
        d.text((60, top + i * cell + cell // 2 - 8), classes[i], fill="black", font=small)
        for j in range(k):
            v = frac[i, j]
            shade = int(255 - 200 * v)
            color = (shade, shade, 255) if i == j else (255, shade, shade)
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell, y0 + cell], fill=color, outline="gray")
            txt_color = "white" if v > 0.6 else "black"
            d.text((x0 + cell // 2 - 14, y0 + cell // 2 - 18), str(cm[i, j]), fill=txt_color, font=font)
            d.text((x0 + cell // 2 - 18, y0 + cell // 2 + 4), f"{100 * v:.0f}%", fill=txt_color, font=small)
    d.text((10, h - 40), "cells: count and % of the true class (row)", fill="black", font=small)
    im.save(path)


def write_report(metrics: dict, out_dir: str | os.PathLike, *, predictions: dict | None = None) -> None:
    """metrics.json, training curves, confusion matrices and reliability diagrams per evaluated set,
    and a grid of sample predictions (a few correct per class and the worst mistakes)."""
    from .train_figures import draw_curves_png, draw_reliability_png, draw_samples_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    classes = metrics["classes"]
    if metrics.get("history"):
        draw_curves_png(
            metrics["history"], out_dir / "training_curves.png", best_epoch=metrics["settings"].get("best_epoch")
        )
    titles = {
        "test_v3": "Kermany official test set (split_hint test-v3)",
        "test_val": "report-only split_hint test + val",
        "validation": "held-out validation patients",
        "width_holdout": "held-out scan widths",
    }
    for name, m in metrics.get("evaluation", {}).items():
        draw_confusion_png(
            m["confusion_matrix"], classes, out_dir / f"confusion_{name}.png", f"{titles.get(name, name)}, n={m['n']}"
        )
        if "reliability_uncalibrated" in m:
            draw_reliability_png(
                {
                    "before (T=1)": (m["reliability_uncalibrated"], m["ece_uncalibrated"]),
                    f"after (T={metrics.get('temperature', 1):.2f})": (m["reliability"], m["ece"]),
                },
                out_dir / f"reliability_{name}.png",
                title=f"reliability, {titles.get(name, name)}",
            )
    for name, preds in (predictions or {}).items():
        if name not in ("test_v3", "validation") or not preds:
            continue
        items = []
        for c in classes:  # the two most confident correct predictions per class
            right = sorted((p for p in preds if p["true"] == c and p["pred"] == c), key=lambda p: -p["confidence"])
            items += right[:2]
        wrong = sorted((p for p in preds if p["true"] != p["pred"]), key=lambda p: -p["confidence"])
        items += [dict(p, note="confident mistake") for p in wrong[:10]]
        unsure = sorted(preds, key=lambda p: p["confidence"])[:4]
        items += [dict(p, note="least confident") for p in unsure]
        for p in items:
            p.setdefault("note", f"{p['width']} px wide")
        draw_samples_png(
            items,
            out_dir / f"samples_{name}.png",
            title=f"sample predictions, {titles.get(name, name)}: "
            "2 correct per class, the 10 most confident mistakes, the 4 least confident",
        )


# ----------------------------------------------------------------------------------------- train


# ------------------------------------------------------------------------------- width handling


def decode_strips(
    records: Sequence[Record], height: int, *, threads: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every scan decoded once at ``height`` rows with its aspect ratio kept (a "strip"), through the
    inference decoder (``resize="stretch"`` to the scan's own aspect): (uint8 (N, height, Wmax) left-aligned,
    widths (N,), ok mask (N,)). Training crops and rescales these strips per sample, which is how one
    cache serves every resize rule and the lateral-scale augmentation."""
    from PIL import Image

    from .decode.base import read_bytes
    from .decode.cpu import decode_image

    n = len(records)
    sizes = []
    for r in records:
        if not (r.width and r.height):
            try:
                with Image.open(r.path) as im:
                    r.width, r.height = im.size
            except Exception:  # noqa: BLE001 - unreadable: left out below
                r.width, r.height = 0, 0
        sizes.append(max(1, round(height * r.width / r.height)) if r.height else 0)
    wmax = max([w for w in sizes if w] or [height])
    strips = np.zeros((n, height, wmax), np.uint8)
    ok = np.zeros(n, bool)

    def work(i: int) -> None:
        if not sizes[i]:
            return
        spec = Preprocessing(input_size=(height, max(8, sizes[i])), resize="stretch")
        try:
            img, _ = decode_image(read_bytes(records[i].path), spec)
        except Exception:  # noqa: BLE001 - an unreadable scan is left out, never fatal
            return
        strips[i, :, : img.shape[1]] = img
        ok[i] = True

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(work, range(n)))
    return strips, np.asarray([max(8, w) if w else 0 for w in sizes], int), ok


def _crop_strips(
    torch,
    strips,
    widths,
    idx,
    *,
    out_hw: tuple[int, int],
    resize: str,
    lateral: tuple[float, float] | None,
    gen,
    density: tuple[float, float] | None = None,
    scan_widths=None,
):
    """Crop each strip the way ``resize`` crops a scan, with an optional random lateral scale factor
    (log-uniform in ``lateral``: the crop covers 1/f as many A-scans, i.e. the retina appears f times
    wider, which is what another A-scan density does), then resize to out_hw with antialiasing (close to
    the decoders' area resize). Returns float (N, 1, H, W) in 0..1."""
    F = torch.nn.functional
    h_out, w_out = out_hw
    height = strips.shape[1]
    out = torch.empty((len(idx), 1, h_out, w_out))
    if density is not None:
        # Target A-scan density: every scan, whatever its own width, is shown as if it had been acquired
        # with a width drawn log-uniformly from ``density`` (e.g. 512..1536 A-scans for one scan length),
        # so no class can be recognised by the density it happened to be acquired with.
        target = torch.exp(
            torch.empty(len(idx)).uniform_(math.log(density[0]), math.log(density[1]), generator=gen)
        ).tolist()
        f = [t / float(scan_widths[i]) for t, i in zip(target, idx)]
    elif lateral is not None:
        f = torch.exp(
            torch.empty(len(idx)).uniform_(math.log(lateral[0]), math.log(lateral[1]), generator=gen)
        ).tolist()
    else:
        f = [1.0] * len(idx)
    for k, i in enumerate(idx):
        sw = int(widths[i])
        base = height * w_out / h_out if resize == "center_crop" else sw
        cw = int(round(min(sw, max(8.0, base / f[k]))))
        left = (sw - cw) // 2
        region = torch.from_numpy(strips[i, :, left : left + cw]).float().div_(255.0)[None, None]
        out[k] = F.interpolate(region, size=(h_out, w_out), mode="bilinear", antialias=True, align_corners=False)[0]
    return out


# ----------------------------------------------------------------------------------------- train


def _card_text(
    n_params: int,
    spec: Preprocessing,
    split: dict,
    best_epoch: int,
    epochs: int,
    seed: int,
    temperature: float,
    validation: dict | None,
) -> str:
    rule = "whole scan resized (stretch)" if spec.resize == "stretch" else "centre square crop"
    counts = "; ".join(
        f"{role} " + ", ".join(f"{c} {n}" for c, n in split["counts"][role].items()) for role in ("train", "val")
    )
    held = (
        f" Held-out patients (n={validation['n']}): accuracy {validation['accuracy']:.3f}, macro F1 {validation['macro_f1']:.3f}."
        if validation
        else ""
    )
    return (
        f"octbatch oct4-default: small ResNet-like CNN ({n_params:,} parameters) classifying one grayscale retinal "
        f"OCT B-scan ({rule}, {spec.height}x{spec.width}) into CNV, DME, DRUSEN or NORMAL. Trained with octbatch.train "
        f"on the Kermany OCT2017 sample (CC BY 4.0, doi:10.17632/rscbjbr9sj.2; Kermany et al., Cell 2018), patient-wise "
        f"split ({counts}), never on Kermany's official test set; epoch {best_epoch} of {epochs} kept by validation macro F1, "
        f"seed {seed}; outputs are temperature-scaled logits (T={temperature:.3f}, fitted on the validation patients)."
        f"{held} A demonstration model, not a medical device: not for diagnosis or any clinical use."
    )


def train(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    epochs: int = DEFAULTS["epochs"],
    seed: int = 0,
    input_size: int = DEFAULTS["input_size"],
    batch_size: int = DEFAULTS["batch_size"],
    threads: int = 2,
    log: Callable[[str], None] = print,
    lr: float = DEFAULTS["lr"],
    weight_decay: float = DEFAULTS["weight_decay"],
    val_fraction: float = DEFAULTS["val_fraction"],
    widths: Sequence[int] = DEFAULTS["widths"],
    stem: int = DEFAULTS["stem"],
    near_dup: float = DEFAULTS["near_dup"],
    resize: str = DEFAULTS["resize"],
    lateral_scale: tuple[float, float] | None = DEFAULTS["lateral_scale"],
    density: tuple[float, float] | None = DEFAULTS["density"],
    holdout_widths: Sequence[int] = (),
    train_fraction: float = 1.0,
    report_dir: str | os.PathLike | None = None,
    benchmark: bool = True,
    evaluate_report_only: bool = True,
) -> dict:
    """Train, export ``out`` (ONNX with octbatch metadata), evaluate it with ONNX Runtime; return metrics.

    The epoch kept is the one with the best macro F1 on the patient-wise validation split (ties:
    lower validation loss); a temperature fitted on the same validation scans is baked into the
    exported graph, so every backend outputs calibrated probabilities. Report-only scans (manifest
    split_hint test-v3/test/val) are evaluated once, at the end, on the exported file.

    ``resize``: the preprocessing rule stored in the model (``stretch`` or ``center_crop``).
    ``lateral_scale``: range of the random lateral scale factor (None: off).
    ``density``: (lo, hi) A-scan counts: show every scan at a density drawn log-uniformly from this range
    instead (overrides ``lateral_scale``).
    ``holdout_widths``: scan widths never trained or validated on; scans of those widths (not report-only)
    are evaluated at the end as ``width_holdout`` (the width experiment of engines/README.md).
    ``train_fraction``: train on this fraction of the training scans (the learning curve).
    """
    from ._deps import require
    from .calibration import fit_temperature, nll

    # OpenMP's default spin-wait makes torch's 2-thread training ~10x slower as soon as another process
    # competes for the cores (measured: 4.3 s vs 0.37 s per batch); passive waiting costs nothing alone.
    # Only effective before torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch = require("torch", purpose="training")
    F = torch.nn.functional
    t_start = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise OctbatchError(
            f"--out {out} should end in .onnx", "Give the path of the model file to write, e.g. model.onnx."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if epochs < 1:
        raise OctbatchError("epochs must be at least 1", "Pass --epochs 1 or more.")
    if resize not in ("stretch", "center_crop"):
        raise OctbatchError(f"unknown resize rule {resize!r}", "Use stretch or center_crop.")
    if not 0.0 < train_fraction <= 1.0:
        raise OctbatchError(f"train fraction {train_fraction} is out of range", "Give a fraction in (0, 1].")
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    classes = list(CLASS_NAMES)
    hw = (input_size, input_size)
    try:
        records = load_records(data_dir)
        t0 = time.perf_counter()
        strips, strip_w, ok = decode_strips(records, input_size, threads=threads)
        bad = [r.rel for r, good in zip(records, ok) if not good]
        keep = np.flatnonzero(ok)
        records = [records[i] for i in keep]
        strips, strip_w = strips[keep], strip_w[keep]
        scan_w = np.array([r.width for r in records], float)
        base_spec = Preprocessing(input_size=hw, resize=resize)
        # The images inference produces for this rule: validation, near-duplicate check, normalisation.
        exact, _ = decode_cache(records, base_spec, threads=threads)
        log(f"decoded {len(records)} scans in {time.perf_counter() - t0:.1f}s ({len(bad)} unreadable, left out)")
        split = split_records(records, val_fraction=val_fraction, seed=seed, images=exact, near_dup=near_dup)
        held_widths = {int(w) for w in holdout_widths}
        for r in records:
            if held_widths and r.role in ("train", "val") and r.width in held_widths:
                r.role = "width_holdout"
        if train_fraction < 1.0:
            tr_all = [r for r in records if r.role == "train"]
            pick = set(
                rng.choice(
                    len(tr_all), size=max(len(classes), round(train_fraction * len(tr_all))), replace=False
                ).tolist()
            )
            for k, r in enumerate(tr_all):
                if k not in pick:
                    r.role, r.why = "unused", f"left out by train_fraction={train_fraction}"
        split["counts"] = {
            role: dict(sorted(Counter(r.label for r in records if r.role == role).items()))
            for role in ("train", "val", "report", "excluded", "width_holdout", "unused")
        }
        split["counts_by_width"] = {
            role: dict(sorted(Counter(f"{r.label} {r.width}x{r.height}" for r in records if r.role == role).items()))
            for role in ("train", "val", "report", "excluded", "width_holdout")
        }
        log(f"split: {json.dumps(split['counts'])}")
        roles = np.array([r.role for r in records])
        y = np.array([classes.index(r.label) for r in records])
        tr = np.flatnonzero(roles == "train")
        va = np.flatnonzero(roles == "val")
        if len(tr) == 0:
            raise OctbatchError("no scans left for training", "Check the data folder and its manifest.")
        # Normalisation from the training scans (0..1 pixel scale), stored in the model's metadata.
        px = exact[tr].astype(np.float64) / 255.0
        mean, std = float(px.mean()), float(px.std())
        del px
        spec = replace(base_spec, mean=(round(mean, 5),), std=(round(max(std, 1e-3), 5),))

        model = build_model(len(classes), channels=spec.channels, stem=stem, widths=widths)
        n_params = int(sum(p.numel() for p in model.parameters()))
        log(
            f"model: {n_params:,} parameters; resize={resize} lateral_scale={lateral_scale} density={density}; mean={spec.mean[0]} std={spec.std[0]}"
        )

        # Class-balanced sampling: every class is drawn equally often; an epoch is len(train) draws.
        counts = np.bincount(y[tr], minlength=len(classes)).astype(float)
        w = 1.0 / np.maximum(counts[y[tr]], 1.0)
        w /= w.sum()
        steps = max(1, math.ceil(len(tr) / batch_size))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.15)
        xva = _u8_to_input(torch, exact[va], spec) if len(va) else None
        yva = torch.from_numpy(y[va]) if len(va) else None
        best = None
        history = []
        for ep in range(1, epochs + 1):
            te = time.perf_counter()
            model.train()
            draw = rng.choice(tr, size=steps * batch_size, replace=True, p=w)
            tot, n_seen, n_right = 0.0, 0, 0
            for s in range(steps):
                idx = draw[s * batch_size : (s + 1) * batch_size]
                if len(idx) < 2:
                    continue
                xb = _crop_strips(
                    torch,
                    strips,
                    strip_w,
                    idx,
                    out_hw=hw,
                    resize=resize,
                    lateral=lateral_scale,
                    gen=gen,
                    density=density,
                    scan_widths=scan_w,
                )
                xb = _normalize_t(torch, _augment(torch, xb, gen), spec)
                yb = torch.from_numpy(y[idx])
                logits = model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=DEFAULTS["label_smoothing"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                tot += float(loss.detach()) * len(idx)
                n_seen += len(idx)
                n_right += int((logits.detach().argmax(1) == yb).sum())
            entry = {
                "epoch": ep,
                "train_loss": round(tot / max(1, n_seen), 4),
                "train_accuracy": round(n_right / max(1, n_seen), 4),
            }
            if xva is not None:
                model.eval()
                with torch.no_grad():
                    logits = torch.cat([model(xva[i : i + 256]) for i in range(0, len(xva), 256)])
                    vloss = float(F.cross_entropy(logits, yva))
                vm = classification_metrics(y[va], logits.argmax(1).numpy(), classes)
                entry.update(
                    val_loss=round(vloss, 4),
                    val_accuracy=vm["accuracy"],
                    val_macro_f1=vm["macro_f1"],
                    val_balanced_accuracy=vm["balanced_accuracy"],
                )
                score = (vm["macro_f1"], -vloss)
            else:
                score = (ep, 0.0)  # nothing to select on: keep the last epoch
            entry["seconds"] = round(time.perf_counter() - te, 1)
            history.append(entry)
            log(" ".join(f"{k}={v}" for k, v in entry.items()))
            if best is None or score > best[0]:
                best = (score, ep, {k: v.detach().clone() for k, v in model.state_dict().items()})
        model.load_state_dict(best[2])
        best_epoch = best[1]
        model.eval()
        temperature = 1.0
        if xva is not None:
            with torch.no_grad():
                vlog = torch.cat([model(xva[i : i + 256]) for i in range(0, len(xva), 256)]).numpy()
            temperature = fit_temperature(vlog, y[va])
            log(
                f"kept epoch {best_epoch}; temperature {temperature:.3f} (validation NLL {nll(vlog, y[va]):.4f} -> {nll(vlog, y[va], temperature):.4f})"
            )
        train_seconds = time.perf_counter() - t_start
        card = _card_text(n_params, spec, split, best_epoch, epochs, seed, temperature, None)
        _export_onnx(torch, _Scaled(torch, model, temperature), spec, out, classes, card, temperature=temperature)
        log(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB)")
    finally:
        torch.set_num_threads(prev_threads)

    by_role = defaultdict(list)
    for r in records:
        by_role[r.role].append(r)
    evaluation: dict = {}
    predictions: dict[str, list] = {}
    sets = {"validation": by_role["val"], "width_holdout": by_role["width_holdout"]}
    if evaluate_report_only:
        for name, hints in REPORT_SETS.items():
            sets[name] = [r for r in by_role["report"] if r.split_hint in hints]
    for name, recs in sets.items():
        if recs:
            predictions[name] = []
            evaluation[name] = evaluate_onnx(
                out, recs, threads=threads, temperature=temperature, predictions=predictions[name]
            )
            m = evaluation[name]
            log(
                f"{name}: n={m['n']} accuracy={m['accuracy']} balanced={m['balanced_accuracy']} macro_f1={m['macro_f1']} "
                f"urgent sens={m['referral']['urgent_sensitivity']} ece={m['ece']} (uncalibrated {m.get('ece_uncalibrated')})"
            )
    if "validation" in evaluation:
        update_card(
            out, _card_text(n_params, spec, split, best_epoch, epochs, seed, temperature, evaluation["validation"])
        )
    from .model import file_sha256, load_model_info

    info = load_model_info(out)
    metrics = {
        "model": out.name,
        "sha256": file_sha256(out),
        "bytes": out.stat().st_size,
        "classes": classes,
        "parameters": n_params,
        "preprocessing": json.loads(spec.to_json()),
        "temperature": round(temperature, 4),
        "card": info.card,
        "settings": {
            "epochs": epochs,
            "best_epoch": best_epoch,
            "seed": seed,
            "input_size": input_size,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "label_smoothing": DEFAULTS["label_smoothing"],
            "val_fraction": val_fraction,
            "stem": stem,
            "widths": list(widths),
            "near_dup_threshold": near_dup,
            "threads": threads,
            "resize": resize,
            "lateral_scale": list(lateral_scale) if lateral_scale else None,
            "density": list(density) if density else None,
            "holdout_widths": sorted(held_widths),
            "train_fraction": train_fraction,
            "optimizer": "AdamW",
            "schedule": "OneCycle (15% warm-up, cosine)",
            "sampling": "class-balanced",
            "selection": "best validation macro F1 (ties: lower validation loss)",
            "calibration": "temperature scaling on the validation patients, baked into the graph",
        },
        "split": split,
        "unreadable": bad,
        "history": history,
        "train_seconds": round(train_seconds, 1),
        "evaluation": evaluation,
        "torch_version": torch.__version__,
    }
    if benchmark:
        metrics["speed"] = _benchmark_fresh(out, threads=threads)
        log(f"speed: {metrics['speed']}")
    if report_dir is not None:
        write_report(metrics, report_dir, predictions=predictions)
    return metrics


def _Scaled(torch, model, temperature: float):
    """The trained network with its logits divided by the fitted temperature (one Div in the graph)."""

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model
            self.register_buffer("inv_t", torch.tensor(1.0 / float(temperature)))

        def forward(self, x):
            return self.net(x) * self.inv_t

    return Scaled().eval()
