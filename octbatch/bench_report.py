"""Former home of the bench renderers; they live in octbatch.bench.render (kept so old imports work)."""

from .bench.render import fmt_rate, render_charts, render_markdown

__all__ = ["fmt_rate", "render_charts", "render_markdown"]
