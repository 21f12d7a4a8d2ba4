"""The README's layout section names every module of the package, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\nLayout.")
    fence = text.index("```", start)
    return text[fence + 3 : text.index("```", fence + 3)]


def _listed() -> dict[str, str]:
    out = {}
    for line in _layout_block().splitlines():
        m = re.match(r"(octbatch/\S+\.py)\s+(\S.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_every_module_is_listed_with_its_job():
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "octbatch").rglob("*.py")}
    listed = _listed()
    assert sorted(modules - set(listed)) == [], "modules missing from README.md's layout section"
    assert sorted(set(listed) - modules) == [], "README.md's layout section lists modules that do not exist"
    assert all(job.strip() for job in listed.values())
