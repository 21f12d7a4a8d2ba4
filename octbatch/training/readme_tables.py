"""Number formatting and the Markdown tables of the shipped model's card (octbatch.training.readme_card)."""

from __future__ import annotations

__all__ = ["by_width", "confusion", "f", "per_class", "split_table", "width_split_table"]


def f(x, nd=3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def per_class(m: dict, classes: list[str]) -> list[str]:
    rows = ["| class | precision | recall | F1 | n |", "| --- | ---: | ---: | ---: | ---: |"]
    for c in classes:
        p = m["per_class"][c]
        rows.append(f"| {c} | {f(p['precision'])} | {f(p['recall'])} | {f(p['f1'])} | {p['support']} |")
    return rows


def confusion(m: dict, classes: list[str]) -> list[str]:
    rows = ["| true \\ predicted | " + " | ".join(classes) + " |", "| --- |" + " ---: |" * len(classes)]
    for c, r in zip(classes, m["confusion_matrix"]):
        rows.append(f"| {c} | " + " | ".join(str(v) for v in r) + " |")
    return rows


def by_width(m: dict) -> list[str]:
    rows = ["| width | n | accuracy | classes |", "| --- | ---: | ---: | --- |"]
    for w, g in m.get("accuracy_by_width", {}).items():
        rows.append(
            f"| {w} | {g['n']} | {f(g['accuracy'])} | " + ", ".join(f"{c} {n}" for c, n in g["classes"].items()) + " |"
        )
    return rows


def split_table(split: dict, classes: list[str]) -> list[str]:
    roles = [r for r in ("train", "val", "report", "excluded", "width_holdout", "unused") if split["counts"].get(r)]
    names = {
        "train": "train",
        "val": "validation",
        "report": "report-only",
        "excluded": "left out",
        "width_holdout": "width hold-out",
        "unused": "unused",
    }
    rows = ["| class | " + " | ".join(names[r] for r in roles) + " |", "| --- |" + " ---: |" * len(roles)]
    for c in classes:
        rows.append(f"| {c} | " + " | ".join(str(split["counts"][r].get(c, 0)) for r in roles) + " |")
    rows.append("| total | " + " | ".join(str(sum(split["counts"][r].values())) for r in roles) + " |")
    return rows


def width_split_table(split: dict, classes: list[str]) -> list[str]:
    byw = split.get("counts_by_width", {})
    sizes = sorted(
        {k.split(" ", 1)[1] for d in byw.values() for k in d}, key=lambda s: tuple(int(v) for v in s.split("x"))
    )
    roles = [r for r in ("train", "val", "report", "excluded") if byw.get(r)]
    rows = [
        "| size | " + " | ".join(f"{r} ({'/'.join(c[:2] for c in classes)})" for r in roles) + " |",
        "| --- |" + " --- |" * len(roles),
    ]
    for s in sizes:
        rows.append(
            f"| {s} | " + " | ".join(" / ".join(str(byw[r].get(f"{c} {s}", 0)) for c in classes) for r in roles) + " |"
        )
    return rows
