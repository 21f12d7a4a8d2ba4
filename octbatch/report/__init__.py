"""Reports of a results table: a text summary (stdout / JSON) and one self-contained HTML file.

aggregate.py streams the table once; text.py and html.py render what it found. The HTML report needs the
`report` extra (matplotlib, jinja2); the text summary needs only pyarrow.
"""

from __future__ import annotations

from .aggregate import Aggregate, aggregate
from .text import render_text, summarize, summary_dict

__all__ = ["Aggregate", "aggregate", "summarize", "summary_dict", "render_text", "write_html"]


def write_html(results: str, out: str, **kw) -> dict:
    """Write the HTML report of ``results`` to ``out`` (see octbatch.report.html.write_html)."""
    from .html import write_html as _write

    return _write(results, out, **kw)
