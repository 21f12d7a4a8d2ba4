"""Train and evaluate the OCT gate (``octbatch train-gate``): a tiny CNN "B-scan or not" in its own ONNX file.

Data (engines/GATE.md):
* positives: real OCT B-scans whose manifest ``split_hint`` is ``train`` or ``unknown``; the report-only
  splits (``test-v3``, ``test``, ``val``) are never trained on, nor used to pick the threshold: they
  measure false flags;
* negatives: real non-OCT images (a folder with ``manifest.csv``: path, category, source_repo) plus
  synthetic negatives generated here (blank, saturated, noise, dark speckle with no retina, text,
  shapes, gradients, disks with vessels, vessel networks, grids, and real B-scans turned 90 degrees
  or cut into shuffled tiles, so that "horizontal retinal layers" is what the CNN has to learn).

Every image is decoded once in grayscale at 128 px height (aspect kept); each epoch draws a random
crop of random aspect ratio (0.45..2.4) and scale, resized to 64x64, so the gate does not depend on
the classifier's crop/resize rule (centre crop, stretch, ...). Evaluation uses the runtime path
itself: ``decode_image`` with the classifier's preprocessing, then ``gate_input``.

Held-out evaluation splits the non-OCT data by source (``source_repo``), never by image:
``evaluate_holdout`` trains one gate per held-out source (or category) and scores that source's
images with it. torch/onnx are imported inside functions only.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OctbatchError

__all__ = [
    "TRAIN_HINTS",
    "GATE_DEFAULTS",
    "OctImage",
    "load_oct",
    "load_non_oct",
    "load_base",
    "synth_negative",
    "SYNTH_KINDS",
    "random_view",
    "train_gate",
    "export_gate",
    "runtime_views",
    "evaluate_holdout",
    "fit_logreg",
    "train_stats",
    "train_gate_file",
]

TRAIN_HINTS = ("train", "unknown")  # everything else (test-v3, test, val, ...) is report-only
BASE_HEIGHT = 128
GATE_DEFAULTS = dict(
    epochs=8,
    batch_size=128,
    lr=3e-3,
    weight_decay=1e-4,
    synth_per_epoch=1600,
    real_neg_repeat=8,
    val_fraction=0.1,
    target_false_flag=0.002,
    max_threshold=0.5,
)
SYNTH_KINDS = (
    "constant",
    "saturated",
    "gradient",
    "noise",
    "dark_speckle",
    "text",
    "shapes",
    "disk",
    "vessels",
    "clouds",
    "grid",
    "oct_rotated",
    "oct_tiles",
    "oct_background",
)


@dataclass
class OctImage:
    path: str
    rel: str
    positive: bool
    split: str  # OCT: split_hint; non-OCT: "non-oct"
    category: str  # OCT: its label; non-OCT: fundus / chest_xray / grey_enface / other
    source: str  # non-OCT: source_repo (hold-out unit); OCT: "oct2017"


def _read_manifest(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load_oct(data_dir: str | os.PathLike) -> list[OctImage]:
    root = Path(data_dir)
    m = root / "manifest.csv"
    if not m.is_file():
        raise OctbatchError(
            f"{m} does not exist",
            "Give the OCT folder with a manifest.csv (path,label,...,split_hint), e.g. ../shared/data/oct2017.",
        )
    return [
        OctImage(
            str(root / r["path"]),
            r["path"],
            True,
            (r.get("split_hint") or "unknown").strip() or "unknown",
            r.get("label", ""),
            "oct2017",
        )
        for r in _read_manifest(m)
    ]


def load_non_oct(data_dir: str | os.PathLike) -> list[OctImage]:
    root = Path(data_dir)
    m = root / "manifest.csv"
    if not m.is_file():
        raise OctbatchError(
            f"{m} does not exist",
            "Give the non-OCT folder with a manifest.csv (path,category,source_repo,...), e.g. ../shared/data/non-oct.",
        )
    return [
        OctImage(
            str(root / r["path"]),
            r["path"],
            False,
            "non-oct",
            r["category"],
            r["source_repo"].rstrip("/").rsplit("/", 1)[-1],
        )
        for r in _read_manifest(m)
    ]


# ------------------------------------------------------------------------------------------ images


def _decode_gray(path: str) -> np.ndarray | None:
    """Full grayscale decode (what any decoder converts to), resized to BASE_HEIGHT px height."""
    import cv2

    from .decode.base import read_bytes
    from .decode.cpu import _to_gray_u8

    try:
        data = read_bytes(path)
        if data[:3] == b"\xff\xd8\xff":
            import simplejpeg

            img = simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=BASE_HEIGHT, min_width=8)
            img = img[:, :, 0] if img.ndim == 3 else img
        else:
            import io

            from PIL import Image

            img = _to_gray_u8(Image.open(io.BytesIO(data)))
    except Exception:  # noqa: BLE001 - an unreadable file is left out of training, never fatal
        return None
    h, w = img.shape
    nw = max(8, min(4 * BASE_HEIGHT, round(w * BASE_HEIGHT / h)))
    return cv2.resize(img, (nw, BASE_HEIGHT), interpolation=cv2.INTER_AREA)


def load_base(items: Sequence[OctImage], *, threads: int = 2) -> list[np.ndarray | None]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(lambda it: _decode_gray(it.path), items))


def runtime_views(items: Sequence[OctImage], spec, *, threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """What the gate sees at run time: decode_image with the classifier's preprocessing -> gate_input.
    Returns (float32 (N,1,64,64), ok mask)."""
    from concurrent.futures import ThreadPoolExecutor

    from .decode.base import read_bytes
    from .decode.cpu import decode_image
    from .gate import gate_input

    imgs = np.zeros((len(items), spec.height, spec.width), np.uint8)
    ok = np.zeros(len(items), bool)

    def work(i):
        try:
            imgs[i] = decode_image(read_bytes(items[i].path), spec)[0]
            ok[i] = True
        except Exception:  # noqa: BLE001 - unreadable: no view
            pass

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(work, range(len(items))))
    return gate_input(imgs), ok


def random_view(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (scale 0.65..1 of the height, aspect 0.45..2.4 clipped to the image), resized to
    64x64, flipped left-right half the time, with gamma/contrast/brightness jitter. uint8 out."""
    import cv2

    from .gate import GATE_SIZE

    h, w = base.shape
    ch = int(round(h * rng.uniform(0.65, 1.0)))
    aspect = float(np.exp(rng.uniform(np.log(0.45), np.log(2.4))))
    cw = int(min(w, max(8, round(ch * aspect))))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    crop = base[top : top + ch, left : left + cw]
    gh, gw = GATE_SIZE
    v = cv2.resize(crop, (gw, gh), interpolation=cv2.INTER_AREA if (ch >= gh and cw >= gw) else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        v = v[:, ::-1]
    x = v.astype(np.float32) / 255.0
    x = x ** float(np.exp(rng.uniform(-0.3, 0.3)))
    m = x.mean()
    x = (x - m) * rng.uniform(0.75, 1.25) + m + rng.uniform(-0.06, 0.06)
    if rng.random() < 0.15:
        x = cv2.GaussianBlur(x, (3, 3), 0)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------- synthetic negatives


def _smooth_noise(rng, h, w, scale):
    import cv2

    small = rng.random((max(2, h // scale), max(2, w // scale))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def synth_negative(
    kind: str,
    rng: np.random.Generator,
    oct_bases: Sequence[np.ndarray] = (),
    h: int = BASE_HEIGHT,
    w: int = BASE_HEIGHT,
) -> np.ndarray:
    """One synthetic non-B-scan image (uint8, h x w) of the given kind."""
    import cv2

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "constant":
        img = np.full((h, w), rng.choice([0, 255, rng.uniform(0, 255)]), np.float32) + rng.normal(
            0, rng.uniform(0, 2), (h, w)
        )
    elif kind == "saturated":
        img = np.where(
            _smooth_noise(rng, h, w, int(rng.integers(4, 40))) > rng.uniform(0.3, 0.7), 255.0, rng.uniform(0, 80)
        )
    elif kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy) / max(h, w)
        if rng.random() < 0.4:
            t = np.hypot(xx - rng.uniform(0, w), yy - rng.uniform(0, h)) / max(h, w)
        img = 255 * (t - t.min()) / max(1e-6, float(np.ptp(t)))
    elif kind == "noise":
        img = rng.uniform(0, 255, (h, w)) if rng.random() < 0.5 else rng.normal(128, rng.uniform(10, 80), (h, w))
    elif kind == "dark_speckle":  # a B-scan with nothing in view: dim speckle, maybe a faint band
        img = rng.uniform(5, 30) * rng.gamma(2.0, 0.5, (h, w))
    elif kind == "text":
        bg = int(rng.choice([255, 240, 0, 30]))
        img = np.full((h, w), bg, np.uint8)  # putText draws on 8-bit images only
        fg = 255 - bg
        for _ in range(int(rng.integers(3, 12))):
            s = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .:%-/"), int(rng.integers(4, 18))))
            cv2.putText(
                img,
                s,
                (int(rng.integers(0, w // 2)), int(rng.integers(8, h))),
                int(rng.integers(0, 4)),
                rng.uniform(0.25, 0.7),
                int(fg * rng.uniform(0.5, 1)),
                1,
            )
        if rng.random() < 0.5:
            for _ in range(int(rng.integers(1, 5))):
                y = int(rng.integers(0, h))
                cv2.line(img, (0, y), (w, y), int(fg * 0.6), 1)
    elif kind == "shapes":
        img = np.full((h, w), rng.uniform(0, 255), np.float32)
        for _ in range(int(rng.integers(2, 10))):
            c = float(rng.uniform(0, 255))
            p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            if rng.random() < 0.5:
                cv2.rectangle(
                    img, p, (int(rng.integers(0, w)), int(rng.integers(0, h))), c, -1 if rng.random() < 0.6 else 2
                )
            else:
                cv2.circle(img, p, int(rng.integers(3, w // 2)), c, -1 if rng.random() < 0.6 else 2)
    elif kind == "disk":  # fundus-like: bright disk, dark corners, darker vessels, a bright optic disc
        r = min(h, w) * rng.uniform(0.38, 0.55)
        cx, cy = w / 2 + rng.uniform(-6, 6), h / 2 + rng.uniform(-6, 6)
        d = np.hypot(xx - cx, yy - cy)
        img = np.where(d < r, rng.uniform(70, 200) * (1 - 0.4 * (d / r) ** 2), rng.uniform(0, 15))
        img = img * (0.85 + 0.3 * _smooth_noise(rng, h, w, 16))
        ox, oy = cx + rng.uniform(-0.5, 0.5) * r, cy + rng.uniform(-0.3, 0.3) * r
        img = img + 80 * np.exp(-((xx - ox) ** 2 + (yy - oy) ** 2) / (2 * (r * 0.1) ** 2))
        for _ in range(int(rng.integers(4, 10))):
            a = rng.uniform(0, 2 * np.pi)
            pts = [(ox, oy)]
            for _ in range(6):
                a += rng.uniform(-0.5, 0.5)
                pts.append((pts[-1][0] + np.cos(a) * r / 5, pts[-1][1] + np.sin(a) * r / 5))
            cv2.polylines(img, [np.array(pts, np.int32)], False, float(rng.uniform(20, 60)), int(rng.integers(1, 3)))
        img = np.where(d < r, img, rng.uniform(0, 15))
    elif kind == "vessels":  # en-face / angiography-like: a vessel network on a textured background
        img = rng.uniform(20, 120) * _smooth_noise(rng, h, w, int(rng.integers(4, 16)))
        for _ in range(int(rng.integers(6, 25))):
            x, y, a = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * np.pi)
            pts = []
            for _ in range(12):
                a += rng.uniform(-0.6, 0.6)
                x, y = x + np.cos(a) * 8, y + np.sin(a) * 8
                pts.append((x, y))
            cv2.polylines(img, [np.array(pts, np.int32)], False, float(rng.uniform(120, 255)), int(rng.integers(1, 4)))
    elif kind == "clouds":
        img = sum(_smooth_noise(rng, h, w, s) * rng.uniform(0.2, 1) for s in (4, 8, 16, 32))
        img = 255 * (img - img.min()) / max(1e-6, float(np.ptp(img)))
    elif kind == "grid":
        img = np.full((h, w), rng.choice([255.0, 0.0]), np.float32)
        step = int(rng.integers(6, 30))
        c = float(255 - img[0, 0])
        for k in range(0, max(h, w), step):
            cv2.line(img, (k, 0), (k, h), c, 1)
            cv2.line(img, (0, k), (w, k), c, 1)
    elif kind in ("oct_rotated", "oct_tiles", "oct_background"):
        if not len(oct_bases):
            return synth_negative("clouds", rng, oct_bases, h, w)
        b = oct_bases[int(rng.integers(0, len(oct_bases)))]
        if kind == "oct_rotated":  # retinal layers vertical: not a B-scan as any device exports it
            img = np.rot90(b, int(rng.choice([1, 3]))).astype(np.float32)
        elif kind == "oct_tiles":
            bh, bw = b.shape
            t = 4
            th, tw = bh // t, bw // t
            tiles = [b[i * th : (i + 1) * th, j * tw : (j + 1) * tw] for i in range(t) for j in range(t)]
            order = rng.permutation(len(tiles))
            img = np.vstack([np.hstack([tiles[order[i * t + j]] for j in range(t)]) for i in range(t)]).astype(
                np.float32
            )
        else:  # only the darkest band of rows (above or below the retina): speckle, nothing in view
            band = max(4, b.shape[0] // 6)
            means = [b[i : i + band].mean() for i in range(0, b.shape[0] - band + 1, band // 2)]
            top = int(np.argmin(means)) * (band // 2)
            rows = b[top : top + band]
            img = cv2.resize(rows, (b.shape[1], b.shape[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32)
            img = img * rng.gamma(3.0, 1 / 3.0, img.shape)
    else:
        raise ValueError(f"unknown synthetic kind {kind!r}")
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------- training


def build_gate_model():
    """Four 3x3/2 conv layers (64 -> 4 px), averaged along the width (a B-scan's layers run
    horizontally; the vertical layout is kept), one linear logit. About 15k parameters."""
    from ._deps import require

    torch = require("torch", purpose="training the gate")
    nn = torch.nn

    def cbr(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class GateNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(cbr(1, 8), cbr(8, 16), cbr(16, 32), cbr(32, 32))
            self.drop = nn.Dropout(0.2)
            self.head = nn.Linear(32 * 4, 1)

        def forward(self, x):
            f = self.features(x - 0.25).mean(dim=3)  # (N, 32, 4): pooled along the width
            return self.head(self.drop(f.flatten(1)))

    return GateNet()


def _epoch_batch(pos_bases, neg_bases, oct_bases, rng, cfg):
    xs, ys = [], []
    for b in pos_bases:
        xs.append(random_view(b, rng))
        ys.append(1.0)
    for _ in range(cfg["real_neg_repeat"]):
        for b in neg_bases:
            xs.append(random_view(b, rng))
            ys.append(0.0)
    for k in range(cfg["synth_per_epoch"]):
        kind = SYNTH_KINDS[k % len(SYNTH_KINDS)]
        img = synth_negative(kind, rng, oct_bases, BASE_HEIGHT, int(rng.choice([BASE_HEIGHT, 2 * BASE_HEIGHT])))
        xs.append(random_view(img, rng))
        ys.append(0.0)
    return np.stack(xs)[:, None].astype(np.float32) / 255.0, np.array(ys, np.float32)


def train_gate(
    pos_bases: Sequence[np.ndarray],
    neg_bases: Sequence[np.ndarray],
    *,
    seed: int = 0,
    threads: int = 2,
    log=None,
    **overrides,
):
    """Train the gate CNN; returns the torch model (eval mode). Positives and negatives are base images."""
    from ._deps import require

    torch = require("torch", purpose="training the gate")
    cfg = {**GATE_DEFAULTS, **overrides}
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    rng = np.random.default_rng(seed)
    model = build_gate_model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps_per_epoch = None
    sched = None
    oct_bases = list(pos_bases)
    for epoch in range(cfg["epochs"]):
        t0 = time.perf_counter()
        x, y = _epoch_batch(pos_bases, neg_bases, oct_bases, rng, cfg)
        n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
        w = np.where(y > 0, 0.5 / n_pos, 0.5 / n_neg).astype(np.float32) * len(y)
        order = rng.permutation(len(y))
        bs = cfg["batch_size"]
        if sched is None:
            steps_per_epoch = (len(y) + bs - 1) // bs
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=cfg["lr"], total_steps=steps_per_epoch * cfg["epochs"] + 10
            )
        model.train()
        total = 0.0
        for i in range(0, len(y), bs):
            idx = order[i : i + bs]
            xb, yb, wb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx]), torch.from_numpy(w[idx])
            logit = model(xb).view(-1)
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logit, yb, reduction="none") * wb).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log:
            log(
                f"gate epoch {epoch + 1}/{cfg['epochs']}: loss {total / len(y):.4f} ({time.perf_counter() - t0:.1f} s, {len(y)} views)"
            )
    model.eval()
    return model


def fit_logreg(X: np.ndarray, y: np.ndarray, w: np.ndarray, *, iters: int = 600, lr: float = 0.5, l2: float = 1e-3):
    """Weighted logistic regression on standardised features by gradient descent (numpy, deterministic).
    Returns (predict function, model dict for the gate's metadata)."""
    from .gate import stats_probability

    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd
    beta, b0 = np.zeros(Z.shape[1]), 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(Z @ beta + b0, -60, 60)))
        g = w * (p - y)
        beta -= lr * (Z.T @ g / w.sum() + l2 * beta)
        b0 -= lr * g.sum() / w.sum()
    model = {
        "mu": [float(v) for v in mu],
        "sd": [float(v) for v in sd],
        "beta": [float(v) for v in beta],
        "b0": float(b0),
    }
    return (lambda Xn: stats_probability(Xn, model)), model


def train_stats(pos_bases, neg_bases, *, seed: int = 0, **overrides):
    """The statistics half of the gate: stats_features of random views (two per training B-scan, the
    real negatives repeated like the CNN's, the same kinds of synthetic negatives), class-balanced."""
    from .gate import stats_features

    cfg = {**GATE_DEFAULTS, **overrides}
    rng = np.random.default_rng(seed + 1000)
    xs, ys = [], []
    for _ in range(2):
        x, y = _epoch_batch(pos_bases, neg_bases, list(pos_bases), rng, cfg)
        xs.append(stats_features(x))
        ys.append(y)
    X, y = np.concatenate(xs), np.concatenate(ys)
    w = np.where(y > 0, 0.5 / y.sum(), 0.5 / (len(y) - y.sum()))
    return fit_logreg(X.astype(np.float64), y, w)


def torch_scores(model, x01: np.ndarray) -> np.ndarray:
    """Gate probabilities of float inputs (N,1,64,64) with the torch model (rule 1 not applied)."""
    import torch

    with torch.no_grad():
        out = []
        for i in range(0, len(x01), 512):
            out.append(torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(x01[i : i + 512])))).view(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def apply_rules(p: np.ndarray, x01: np.ndarray) -> np.ndarray:
    """Rule 1 of octbatch.gate (blank frames score 0) on CNN probabilities."""
    from .gate import blank_mask, image_stats

    p = p.copy()
    p[blank_mask(*image_stats(x01))] = 0.0
    return p


def export_gate(model, out: str | os.PathLike, info: dict) -> None:
    """Write the gate to ONNX (input `input` (N,1,64,64) float 0..1, output `logit` (N,1)) with its
    metadata (`octbatch.gate`: threshold, version, what it was trained on) next to the weights."""
    import warnings

    import torch

    from ._deps import require
    from .gate import GATE_SIZE, META_GATE
    from .train import _set_metadata

    onnx = require("onnx", purpose="exporting the gate")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, *GATE_SIZE),),
            str(tmp),
            input_names=["input"],
            output_names=["logit"],
            dynamic_axes={"input": {0: "batch"}, "logit": {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    m = onnx.load(str(tmp))
    _set_metadata(onnx, m, {META_GATE: json.dumps(info, sort_keys=True)})
    m.producer_name = "octbatch.train-gate"
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp))
    os.replace(tmp, out)


def _choose_threshold(val_scores: np.ndarray, cfg) -> float:
    """The largest threshold <= max_threshold that flags at most target_false_flag of the training-side
    validation B-scans (never a report-only scan)."""
    q = float(np.quantile(val_scores, cfg["target_false_flag"])) if len(val_scores) else cfg["max_threshold"]
    return float(min(cfg["max_threshold"], max(0.02, q * 0.999)))


def rates(scores: np.ndarray, threshold: float) -> float:
    return float((scores < threshold).mean()) if len(scores) else float("nan")


def evaluate_holdout(
    oct_items,
    oct_bases,
    neg_items,
    neg_bases,
    *,
    spec,
    by: str = "source",
    seed: int = 0,
    threads: int = 2,
    neg_views=None,
    log=None,
    only: Sequence[str] | None = None,
    **overrides,
) -> dict:
    """One gate per held-out group (by="source": source_repo; by="category"), trained without that
    group's real negatives; each held-out image scored by the gate that never saw its group.
    Returns per-image scores and catch rates per group and per category."""
    cfg = {**GATE_DEFAULTS, **overrides}
    # the same training B-scans as the shipped gate (its validation tenth left out)
    pool = [i for i, it in enumerate(oct_items) if it.split in TRAIN_HINTS and oct_bases[i] is not None]
    pool = list(np.random.default_rng(seed).permutation(pool))
    pos = [oct_bases[i] for i in sorted(pool[max(1, int(len(pool) * cfg["val_fraction"])) :])]
    if neg_views is None:
        neg_views, _ = runtime_views(neg_items, spec, threads=threads)
    groups = sorted({getattr(it, by) for it in neg_items} if only is None else only)
    from .gate import stats_features

    scores = np.full(len(neg_items), np.nan, np.float32)
    cnn, st = scores.copy(), scores.copy()
    for g in groups:
        keep = [b for it, b in zip(neg_items, neg_bases) if getattr(it, by) != g and b is not None]
        model = train_gate(pos, keep, seed=seed, threads=threads, **cfg)
        stats_fn, _ = train_stats(pos, keep, seed=seed, **cfg)
        rows = [i for i, it in enumerate(neg_items) if getattr(it, by) == g]
        cnn[rows] = apply_rules(torch_scores(model, neg_views[rows]), neg_views[rows])
        st[rows] = apply_rules(stats_fn(stats_features(neg_views[rows])), neg_views[rows])
        scores[rows] = np.minimum(cnn[rows], st[rows])
        if log:
            log(
                f"held out {by} {g}: {len(rows)} images, median score {float(np.median(scores[rows])):.3f} "
                f"(CNN {float(np.median(cnn[rows])):.3f}, statistics {float(np.median(st[rows])):.3f})"
            )
    return {
        "by": by,
        "groups": groups,
        "scores": scores.tolist(),
        "cnn_scores": cnn.tolist(),
        "stats_scores": st.tolist(),
    }


# ------------------------------------------------------------------------------------ the command


def _by(items, scores, key, threshold):
    out = {}
    for it, s in zip(items, scores):
        out.setdefault(getattr(it, key), []).append(float(s) < threshold)
    return {k: {"n": len(v), "flagged": int(sum(v)), "rate": round(sum(v) / len(v), 4)} for k, v in sorted(out.items())}


def train_gate_file(
    oct_dir: str | os.PathLike,
    non_oct_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    threads: int = 2,
    model: str | None = None,
    holdout: bool = False,
    log=None,
    **overrides,
) -> dict:
    """Train the gate on ``oct_dir`` (B-scans, manifest with split_hint) and ``non_oct_dir`` (manifest with
    category and source_repo), write it to ``out`` with its threshold, and measure it: false flags on
    every report-only split of ``oct_dir`` (through the runtime path, with the classifier's
    preprocessing and with a stretch rule), and, with holdout=True, the catch rate of every non-OCT
    source scored by a gate trained without that source (minutes more). Returns the metrics."""
    from dataclasses import replace as dc_replace

    from .model import load_model_info

    cfg = {**GATE_DEFAULTS, **overrides}
    t0 = time.perf_counter()
    spec = load_model_info(model).preprocessing
    oct_items, neg_items = load_oct(oct_dir), load_non_oct(non_oct_dir)
    oct_bases, neg_bases = load_base(oct_items, threads=threads), load_base(neg_items, threads=threads)
    pool = [i for i, it in enumerate(oct_items) if it.split in TRAIN_HINTS and oct_bases[i] is not None]
    report_rows = [i for i, it in enumerate(oct_items) if it.split not in TRAIN_HINTS]
    if not pool:
        raise OctbatchError(
            f"no training B-scans in {oct_dir} (split_hint train or unknown)",
            "Give the OCT folder whose manifest has train/unknown rows.",
        )
    rng = np.random.default_rng(seed)
    pool = list(rng.permutation(pool))
    n_val = max(1, int(len(pool) * cfg["val_fraction"]))
    val_rows, train_rows = sorted(pool[:n_val]), sorted(pool[n_val:])
    negs = [b for b in neg_bases if b is not None]
    if log:
        log(
            f"gate: {len(train_rows)} training B-scans, {n_val} validation B-scans, {len(negs)} real negatives, "
            f"{cfg['synth_per_epoch']} synthetic negatives per epoch; report-only scans kept out: {len(report_rows)}"
        )
    from .gate import STATS_NAMES, stats_features

    net = train_gate([oct_bases[i] for i in train_rows], negs, seed=seed, threads=threads, log=log, **cfg)
    stats_fn, stats_model = train_stats([oct_bases[i] for i in train_rows], negs, seed=seed, **cfg)
    oct_views, oct_ok = runtime_views(oct_items, spec, threads=threads)
    vv = oct_views[val_rows]
    val_scores = apply_rules(np.minimum(torch_scores(net, vv), stats_fn(stats_features(vv))), vv)
    threshold = _choose_threshold(val_scores, cfg)
    info = {
        "version": 1,
        "threshold": round(threshold, 4),
        "input_size": [64, 64],
        "seed": seed,
        "stats_model": {**stats_model, "features": list(STATS_NAMES)},
        "combine": "min(CNN probability, statistics probability)",
        "trained_on": {
            "oct_scans": len(train_rows),
            "oct_splits": list(TRAIN_HINTS),
            "non_oct_images": len(negs),
            "synthetic_kinds": list(SYNTH_KINDS),
        },
        "rules": "octbatch.gate rules: blank (std < 6 or 99th percentile < 40 of 255, at 64x64) scores 0; "
        "reason 'blank or no retina visible' when the 99th percentile is below 64",
    }
    export_gate(net, out, info)
    from .gate import Gate

    gate = Gate(out)
    metrics = {
        "gate": str(out),
        "threshold": gate.threshold,
        "validation_false_flag": rates(val_scores, threshold),
        "classifier_preprocessing": json.loads(spec.to_json()),
    }
    rep_items = [oct_items[i] for i in report_rows if oct_ok[i]]
    for name, sp in (("classifier_rule", spec), ("stretch_rule", dc_replace(spec, resize="stretch"))):
        views, ok = runtime_views(rep_items, sp, threads=threads)
        s, _ = _score_views(gate, views[ok])
        metrics[f"report_only_false_flags_{name}"] = {
            "all": {"n": int(ok.sum()), "flagged": int((s < threshold).sum()), "rate": round(rates(s, threshold), 5)},
            **_by([it for it, o in zip(rep_items, ok) if o], s, "split", threshold),
        }
    neg_views, neg_ok = runtime_views(neg_items, spec, threads=threads)
    s, _ = _score_views(gate, neg_views)
    metrics["non_oct_caught_in_sample"] = _by(neg_items, s, "category", threshold)
    if holdout:
        for by in ("source", "category"):
            h = evaluate_holdout(
                oct_items,
                oct_bases,
                neg_items,
                neg_bases,
                spec=spec,
                by=by,
                seed=seed,
                threads=threads,
                neg_views=neg_views,
                log=log,
                **cfg,
            )
            hs = np.array(h["scores"])
            metrics[f"non_oct_caught_holding_out_{by}"] = {
                "all": {"n": len(hs), "flagged": int((hs < threshold).sum()), "rate": round(rates(hs, threshold), 4)},
                **{f"category:{k}": v for k, v in _by(neg_items, hs, "category", threshold).items()},
                **{f"source:{k}": v for k, v in _by(neg_items, hs, "source", threshold).items()},
            }
            metrics[f"missed_holding_out_{by}"] = [
                f"{it.rel} ({v:.3f})" for it, v in zip(neg_items, hs) if v >= threshold
            ]
            for half in ("cnn", "stats"):
                hh = np.array(h[f"{half}_scores"])
                metrics[f"non_oct_caught_holding_out_{by}_{half}_alone"] = {
                    "all": round(rates(hh, threshold), 4),
                    **{k: v["rate"] for k, v in _by(neg_items, hh, "category", threshold).items()},
                }
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    return metrics


def _score_views(gate, views01: np.ndarray):
    """Gate.score on float views (what runtime_views made) without a second resize."""
    u8 = np.clip(views01[:, 0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return gate.score(u8)
