"""Inference backends behind one small contract (see base.Runner); names in registry."""

from .registry import BACKEND_CHOICES, BACKENDS, PRECISION_CHOICES, PRECISIONS, make_runner

__all__ = ["BACKENDS", "BACKEND_CHOICES", "PRECISIONS", "PRECISION_CHOICES", "make_runner"]
