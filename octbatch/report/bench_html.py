"""`octbatch bench` as one self-contained HTML page: the Markdown summary and its PNG charts, rendered with
the report's template (same style, same autoescaping, pictures inlined as data URIs)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

__all__ = ["bench_html", "markdown_blocks"]

_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")
_INLINE = re.compile(r"(\*\*[^*]+\*\*|`[^`]+`)")


def _inline(text: str):
    """The two inline forms bench_report writes (**bold**, `code`) as escaped markup."""
    from markupsafe import Markup, escape

    out = Markup("")
    for part in _INLINE.split(text):
        if part.startswith("**") and part.endswith("**") and len(part) > 4:
            out += Markup("<strong>%s</strong>") % part[2:-2]
        elif part.startswith("`") and part.endswith("`") and len(part) > 2:
            out += Markup("<code>%s</code>") % part[1:-1]
        else:
            out += escape(part)
    return out


def markdown_blocks(md: str, folder: str | Path) -> list[dict]:
    """The subset of Markdown that bench_report.render_markdown writes, as blocks for the template:
    headings, paragraphs, bullet lists, pipe tables and images (read from ``folder`` and inlined)."""
    blocks: list[dict] = []
    para: list[str] = []

    def flush():
        if para:
            blocks.append({"kind": "p", "text": _inline(" ".join(x.rstrip() for x in para))})
            para.clear()

    for line in md.splitlines():
        s = line.strip()
        m = _IMAGE.match(s)
        if not s:
            flush()
        elif s.startswith("#"):
            flush()
            level = len(s) - len(s.lstrip("#"))
            blocks.append({"kind": "h", "level": min(level, 3), "text": _inline(s[level:].strip())})
        elif s.startswith("|"):
            flush()
            cells = [_inline(c.strip()) for c in s.strip("|").split("|")]
            if blocks and blocks[-1]["kind"] == "table":
                if not all(set(str(c)) <= set("-: ") for c in cells):
                    blocks[-1]["rows"].append(cells)
            else:
                blocks.append({"kind": "table", "head": cells, "rows": []})
        elif s.startswith("- "):
            flush()
            if not blocks or blocks[-1]["kind"] != "ul":
                blocks.append({"kind": "ul", "items": []})
            blocks[-1]["items"].append(_inline(s[2:]))
        elif m:
            flush()
            p = Path(folder) / Path(m["src"]).name
            if p.is_file():
                uri = "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
                blocks.append({"kind": "img", "alt": m["alt"], "src": uri})
        else:
            para.append(s)
    flush()
    return blocks


def bench_html(res: dict, folder: str | Path) -> str:
    """The HTML page of one bench result (the dict results.json holds); charts are read from ``folder``."""
    from ..bench.render import render_markdown
    from .html import environment

    return (
        environment()
        .get_template("bench.html.j2")
        .render(title=f"octbatch bench, {res.get('created', '')}", blocks=markdown_blocks(render_markdown(res), folder))
    )
