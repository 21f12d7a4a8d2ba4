"""Inference backends behind one small contract (see base.Runner)."""

from .registry import BACKENDS, make_runner

__all__ = ["BACKENDS", "make_runner"]
