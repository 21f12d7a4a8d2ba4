"""Former home of the training pictures; they live in octbatch.training.figures (kept so old imports work)."""

from __future__ import annotations

from .training.figures import draw_confusion_png, draw_curves_png, draw_reliability_png, draw_samples_png

__all__ = ["draw_confusion_png", "draw_curves_png", "draw_reliability_png", "draw_samples_png"]
