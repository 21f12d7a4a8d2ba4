"""The runner contract every backend implements: load, infer(batch) -> probabilities, close."""

from __future__ import annotations

import numpy as np

__all__ = ["Runner", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _looks_like_probs(out: np.ndarray) -> bool:
    return bool(out.size == 0 or (out.min() >= 0.0 and np.allclose(out.sum(axis=1), 1.0, atol=1e-3)))


class Runner:
    """Base class. Subclasses set `name`, `precision` and implement `_load`, `_infer`, `_close`.

    `infer` takes float32 NCHW input and returns float32 class probabilities (N, classes); models
    whose metadata says they output logits get a softmax here, once, for every backend alike.
    """

    name = "base"
    precision = "fp32"

    def __init__(self, model, *, threads: int = 0):
        self.model = model  # octbatch.model.ModelInfo
        self.threads = threads
        self._loaded = False

    def load(self) -> Runner:
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self._loaded:
            self.load()
        return self._postprocess(self._infer(batch), batch.shape[0])

    def _postprocess(self, raw, n: int) -> np.ndarray:
        """The output contract, for host and device inputs alike: float32 (n, classes)
        probabilities; a softmax for models whose metadata says logits (or, with no word, whose
        rows do not look like probabilities)."""
        out = np.asarray(raw, dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != n:
            raise RuntimeError(f"{self.name}: model returned shape {out.shape} for a batch of {n}")
        kind = self.model.output_kind
        if kind == "logits" or (kind == "auto" and not _looks_like_probs(out)):
            return softmax(out)
        return out

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    def __enter__(self) -> Runner:
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()

    # subclass hooks
    def _load(self) -> None:
        raise NotImplementedError

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _close(self) -> None:
        pass
