"""The OCT gate: a per-row score of "does this look like a retinal OCT B-scan?".

Archives exported from ophthalmology devices hold more than B-scans (IR/SLO localisers, fundus
photos, en-face maps, report screenshots, chest X-rays stored beside the OCT folders). The classifier
gives every one of them a disease label with high confidence; the gate gives each row an
``oct_score`` (0..1, higher = looks like a B-scan) and, when it is low, a ``gate_reason``.

The gate is independent of the classifier's weights: a tiny CNN in its own ONNX file
(``octbatch/models/oct-gate-v1.onnx``, trained by ``octbatch train-gate``, see engines/GATE.md) and a
logistic regression on twelve image statistics (stored in the same file's metadata), combined by
taking the lower of the two probabilities: an image must look like a B-scan to both. It sees the
very uint8 image the decoder made for the classifier (any decoder: CPU, Pillow, DALI on the CPU or
the GPU), shrunk to 64x64 here, so it costs no extra decode.

Rules, in order (pixel values on the 0..255 scale, at 64x64):
1. an almost-constant frame (all black, all white, flat grey: pixel std < 6) or a frame with nothing
   bright in it (99th percentile < 40; the dimmest real B-scan measured has 79): score 0, reason
   "blank or no retina visible";
2. otherwise min(CNN probability, statistics probability); below the threshold the reason is "blank or no retina visible"
   when the frame is dim (99th percentile < 64: speckle with no retina in view), else
   "does not look like an OCT B-scan".

Modes: ``flag`` (default) keeps the prediction and sets ``status=suspect``; ``reject`` sets
``status=not_oct`` and leaves ``pred``/``p_*`` null; ``off`` does not run the gate (rows as before
the gate existed, ``oct_score`` null). The threshold is stored in the gate file's metadata
(``octbatch.gate`` JSON) and can be overridden (``--gate-threshold``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OctbatchError

__all__ = [
    "GATE_MODES",
    "GATE_SIZE",
    "META_GATE",
    "REASON_BLANK",
    "REASON_NOT_OCT",
    "REASONS",
    "Gate",
    "GateSettings",
    "default_gate_path",
    "gate_input",
    "image_stats",
    "stats_features",
    "stats_probability",
    "blank_mask",
    "load_gate",
]

GATE_MODES = ("flag", "reject", "off")
GATE_SIZE = (64, 64)  # (height, width) the gate CNN sees
META_GATE = "octbatch.gate"
DEFAULT_GATE_NAME = "oct-gate-v1.onnx"
REASON_BLANK = "blank or no retina visible"
REASON_NOT_OCT = "does not look like an OCT B-scan"
REASONS = (REASON_BLANK, REASON_NOT_OCT)

# Rule 1: blank when the pixel std is below BLANK_STD or the 99th percentile below BLANK_P99.
BLANK_STD = 6.0
BLANK_P99 = 40.0
# Rule 2's reason: a low-scoring frame whose 99th percentile is below this has no retina in view.
DIM_P99 = 64.0


def default_gate_path() -> Path:
    env = os.environ.get("OCTBATCH_GATE_MODEL")
    if env:
        return Path(env)
    return Path(__file__).parent / "models" / DEFAULT_GATE_NAME


@dataclass(frozen=True)
class GateSettings:
    """What the worker needs to run the gate: mode, gate file, threshold (None: the file's own)."""

    mode: str = "flag"
    path: str | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in GATE_MODES:
            raise OctbatchError(f"unknown gate mode {self.mode!r}", f"Use one of {', '.join(GATE_MODES)}.")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise OctbatchError(
                f"--gate-threshold {self.threshold} is not between 0 and 1",
                "Give a score threshold from 0 to 1 (e.g. 0.5).",
            )

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


def gate_input(images_u8: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 images (N, H, W) of any size -> float32 (N, 1, 64, 64) on the 0..1 scale (area resize)."""
    import cv2

    n = images_u8.shape[0]
    gh, gw = GATE_SIZE
    if out is None or out.shape[0] < n:
        out = np.empty((n, 1, gh, gw), np.float32)
    small = np.empty((gh, gw), np.uint8)
    for i in range(n):
        img = images_u8[i]
        if img.shape == GATE_SIZE:
            small = img
        else:
            interp = cv2.INTER_AREA if img.shape[0] >= gh and img.shape[1] >= gw else cv2.INTER_LINEAR
            small = cv2.resize(img, (gw, gh), interpolation=interp)
        np.multiply(small, np.float32(1.0 / 255.0), out=out[i, 0], casting="unsafe")
    return out[:n]


def image_stats(x01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixel std, 99th percentile), both on the 0..255 scale, of gate inputs (N, 1, h, w)."""
    flat = x01.reshape(len(x01), -1)
    if not len(flat):
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    k = int(0.99 * (flat.shape[1] - 1))
    p99 = np.partition(flat, k, axis=1)[:, k]
    return (flat.std(axis=1) * 255.0).astype(np.float32), (p99 * 255.0).astype(np.float32)


STATS_NAMES = (
    "mean",
    "std",
    "row_profile_std",
    "column_profile_std",
    "log_vertical_over_horizontal_gradient",
    "dark_fraction",
    "bright_fraction",
    "brightest_row_position",
    "top_rows_minus_mean",
    "speckle",
    "corners_minus_centre",
    "largest_row_step",
)


def stats_features(x01: np.ndarray) -> np.ndarray:
    """Twelve statistics (N, 12) of gate inputs (N, 1, 64, 64) on the 0..1 scale: what makes a
    B-scan a B-scan in numbers: a horizontal bright band (row profile varies, column profile does
    not, vertical gradients beat horizontal ones), dark above it, speckle, no dark corners."""
    import cv2

    x = x01[:, 0]
    n = len(x)
    if n == 0:
        return np.zeros((0, len(STATS_NAMES)), np.float32)
    b = np.stack([cv2.GaussianBlur(v, (5, 5), 0) for v in x])
    std = x.reshape(n, -1).std(axis=1) + 1e-6
    mean = x.reshape(n, -1).mean(axis=1)
    rows, cols = b.mean(axis=2), b.mean(axis=1)
    gy = np.abs(np.diff(b, axis=1)).mean(axis=(1, 2))
    gx = np.abs(np.diff(b, axis=2)).mean(axis=(1, 2))
    corners = (
        x[:, :8, :8].mean(axis=(1, 2))
        + x[:, :8, -8:].mean(axis=(1, 2))
        + x[:, -8:, :8].mean(axis=(1, 2))
        + x[:, -8:, -8:].mean(axis=(1, 2))
    ) / 4
    centre = x[:, 24:40, 24:40].mean(axis=(1, 2))
    f = np.stack(
        [
            mean,
            std,
            rows.std(axis=1) / std,
            cols.std(axis=1) / std,
            np.log((gy + 1e-4) / (gx + 1e-4)),
            (x < 0.08).reshape(n, -1).mean(axis=1),
            (x > 0.9).reshape(n, -1).mean(axis=1),
            rows.argmax(axis=1) / rows.shape[1],
            rows[:, :8].mean(axis=1) - rows.mean(axis=1),
            np.abs(x - b).reshape(n, -1).mean(axis=1) / std,
            corners - centre,
            np.abs(np.diff(rows, axis=1)).max(axis=1) / std,
        ],
        axis=1,
    )
    return f.astype(np.float32)


def stats_probability(features: np.ndarray, model: dict) -> np.ndarray:
    """The logistic regression stored in the gate's metadata (mu, sd, beta, b0) on stats_features."""
    z = (features - np.asarray(model["mu"], np.float32)) / np.asarray(model["sd"], np.float32)
    t = z.astype(np.float64) @ np.asarray(model["beta"], np.float64) + float(model["b0"])
    return (1.0 / (1.0 + np.exp(-np.clip(t, -60, 60)))).astype(np.float32)


def blank_mask(std: np.ndarray, p99: np.ndarray) -> np.ndarray:
    """Rule 1: frames that are blank or have nothing bright in view."""
    return (std < BLANK_STD) | (p99 < BLANK_P99)


class Gate:
    """A loaded gate: `score(images_u8)` -> (oct_score (N,) float32, reasons list of str or None)."""

    def __init__(self, path: str | os.PathLike | None = None, *, threshold: float | None = None, threads: int = 1):
        from .model import file_sha256

        p = Path(path) if path is not None else default_gate_path()
        if not p.is_file():
            hint = (
                "Pass --gate-model PATH to a gate made by octbatch train-gate, or --gate off."
                if path is not None
                else (
                    "The shipped gate is missing from this install: reinstall octbatch, train one with octbatch train-gate, or use --gate off."
                )
            )
            raise OctbatchError(f"gate model {p} does not exist", hint)
        from .backends.onnxrt import make_session

        try:
            self._sess = make_session(str(p), threads=max(1, int(threads)))
        except OctbatchError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types for bad files
            raise OctbatchError(
                f"gate model {p} is not a valid ONNX model ({str(exc).splitlines()[0][:200]})",
                "Pass a file made by octbatch train-gate, or --gate off.",
            ) from None
        meta = dict(self._sess.get_modelmeta().custom_metadata_map)
        try:
            self.info = json.loads(meta[META_GATE])
            file_threshold = float(self.info["threshold"])
        except (KeyError, ValueError, TypeError):
            raise OctbatchError(
                f"gate model {p} has no octbatch gate metadata", "Pass a file made by octbatch train-gate."
            ) from None
        self.path = str(p)
        self.sha256 = file_sha256(p)
        self.threshold = float(threshold) if threshold is not None else file_threshold
        self.stats_model = self.info.get("stats_model")  # None in a gate without one: the CNN alone
        self._input = self._sess.get_inputs()[0].name
        self._buf: np.ndarray | None = None

    def score(self, images_u8: np.ndarray) -> tuple[np.ndarray, list]:
        n = images_u8.shape[0]
        if n == 0:
            return np.zeros(0, np.float32), []
        buf = self._buf = gate_input(images_u8, self._buf)
        x = buf[:n]
        logits = self._sess.run(None, {self._input: x})[0].reshape(n)
        scores = (1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -60, 60)))).astype(np.float32)
        if self.stats_model is not None:
            scores = np.minimum(scores, stats_probability(stats_features(x), self.stats_model))
        std, p99 = image_stats(x)
        blank = blank_mask(std, p99)
        scores[blank] = 0.0
        low = scores < self.threshold
        reasons: list[str | None] = [None] * n
        for i in np.flatnonzero(low):
            reasons[int(i)] = REASON_BLANK if (blank[i] or p99[i] < DIM_P99) else REASON_NOT_OCT
        return scores, reasons

    def describe(self) -> dict:
        """What a result depends on (stored in the output's metadata)."""
        return {
            "gate_sha256": self.sha256,
            "gate_path": os.path.basename(self.path),
            "threshold": self.threshold,
            "version": self.info.get("version"),
        }

    def close(self) -> None:
        self._sess = None


def load_gate(settings: GateSettings, *, threads: int = 1) -> Gate | None:
    """The Gate for `settings`, or None when the gate is off."""
    if not settings.enabled:
        return None
    return Gate(settings.path, threshold=settings.threshold, threads=threads)
