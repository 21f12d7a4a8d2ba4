"""Rendering of `octbatch bench` results: a Markdown summary people read, and PNG charts.

The charts use the HTML report's figure helper (octbatch.report.charts), and octbatch.report.bench_html turns
the summary and charts into one self-contained report.html with the report's template.

Works from the results dict alone (what results.json holds), so a report can be re-rendered from
a saved JSON file. matplotlib is optional: without it, charts are skipped and the summary says so.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fmt_rate", "render_charts", "render_markdown"]


def fmt_rate(x) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _spread(r: dict) -> str:
    if r.get("n", 1) and r.get("min") is not None and r.get("max") is not None and r.get("n", 1) > 1:
        return f"{fmt_rate(r['min'])}–{fmt_rate(r['max'])}"
    return "–"


def _cfg(r: dict) -> str:
    bits = []
    for k in ("decoder", "backend", "precision", "batch_size", "threads", "executor", "patch"):
        if r.get(k) not in (None, ""):
            bits.append(f"{k.replace('_size', '')}={r[k]}")
    return ", ".join(bits)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def render_markdown(res: dict) -> str:
    """summary.md: the machine and method, the headline, then one table per kind of row."""
    lines: list[str] = []
    for section in (_md_header, _md_headline, _md_stages, _md_e2e, _md_scale, _md_charts):
        lines += section(res)
    return "\n".join(lines)


def _md_header(res: dict) -> list[str]:
    m, v = res["machine"], res["versions"]
    return [
        f"# octbatch bench, {res['created']}",
        "",
        f"**Machine**: {m['cpu']}, {m['cores']} usable core(s), {m['memory_gib']} GiB, "
        f"GPU: {m['gpu'] or 'none'}{' (driver ' + m['driver'] + ')' if m.get('driver') else ''}, {m['os']}, Python {m['python']}.  ",
        "**Versions**: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".  ",
        f"**Archive**: {res['archive']}.  ",
        f"**Model**: {os.path.basename(res['model']['path'])} (input {'x'.join(str(x) for x in res['model']['input'])}, "
        f"{len(res['model']['classes'])} classes, sha256 {res['model']['sha256'][:12]}).  ",
        f"**Method**: {res['config']['warmup']} warm-up, {res['config']['repeats']} repeat(s) of at least "
        f"{res['config']['min_seconds']} s per stage; median (min–max of the repeats). End-to-end runs and baselines each "
        "run in a fresh child process, timed from the start of their work (model load included, interpreter start excluded); "
        "peak RSS is the largest sampled RSS of that child's whole process tree (worker processes and Ray daemons included).",
        "",
        "## Headline",
        "",
    ]


def _md_headline(res: dict) -> list[str]:
    d = res["derived"]
    lines: list[str] = []
    ceiling = d.get("combined_ceiling")
    lines.append(
        f"- Combined ceiling ({d['rule']}, decoder `{d['decoder']}`, batch {d['batch_size']}, {d['threads']} threads): "
        f"decode {fmt_rate(d.get('decode_ceiling'))} img/s, inference {fmt_rate(d.get('infer_ceiling'))} img/s "
        f"-> **{fmt_rate(ceiling)} img/s**."
    )
    lines.append(
        f"- `octbatch run`: **{fmt_rate(d.get('octbatch_img_s'))} img/s = {_pct(d.get('efficiency'))} of the combined ceiling**."
    )
    for name, ratio in d.get("ratios", {}).items():
        lines.append(f"- octbatch vs {name}: **{ratio:.2f}x**")
    for name, ratio in d.get("experiments", {}).items():
        lines.append(f"- experiment {name}: {ratio:.2f}x the default run")
    if d.get("ceiling_note"):
        lines.append(f"- ({d['ceiling_note']}.)")
    return lines


def _md_stages(res: dict) -> list[str]:
    lines: list[str] = []
    lines += [
        "",
        "## Stage ceilings (each stage alone)",
        "",
        "| stage | configuration | median | spread | unit |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if r["kind"] not in ("stage", "ceiling"):
            continue
        if r["kind"] == "ceiling":
            r = {**r, "name": f"{r['name']} ceiling ({r['when']} e2e)"}
        if r.get("skipped"):
            lines.append(f"| {r['name']} | {_cfg(r)} | skipped: {r['skipped']} | | {r['unit']} |")
            continue
        lines.append(f"| {r['name']} | {_cfg(r)} | {fmt_rate(r.get('median'))} | {_spread(r)} | {r['unit']} |")
    return lines


def _md_e2e(res: dict) -> list[str]:
    d = res["derived"]
    ceiling = d.get("combined_ceiling")
    lines: list[str] = []
    lines += [
        "",
        "## End to end and baselines (same archive, same model, one bench run)",
        "",
        "| method | median img/s | spread | vs ceiling | octbatch is | peak RSS MiB | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if r["kind"] not in ("e2e", "baseline", "experiment"):
            continue
        if r.get("skipped") or r.get("error"):
            why = r.get("skipped") or ("failed: " + str(r.get("error")).splitlines()[0][:200])
            lines.append(f"| {r['name']} | – | – | – | – | {fmt_rate(r.get('peak_rss_mb'))} | {why} |")
            continue
        eff = _pct(r["median"] / ceiling) if ceiling else "–"
        ratio = d.get("ratios", {}).get(r["name"])
        if r["kind"] == "experiment" and d.get("experiments", {}).get(r["name"]):
            ratio = 1.0 / d["experiments"][r["name"]]
        note = ""
        det = r.get("detail") or {}
        if "how" in det:
            note = det["how"]
        if det.get("run_files_per_second"):
            note = f"octbatch's own files/s (after start-up, before merge): {fmt_rate(det['run_files_per_second'])}"
        if "img_s_without_init" in det:
            note = f"without ray.init: {fmt_rate(det['img_s_without_init'])} img/s (init {det['init_seconds']:.1f} s)"
        if r.get("errors") or det.get("errors"):
            note += f" {det.get('errors')} unreadable file(s)"
        lines.append(
            f"| {r['name']} | {fmt_rate(r['median'])} | {_spread(r)} | {eff} | {f'{ratio:.2f}x' if ratio else '–'} | "
            f"{fmt_rate(r.get('peak_rss_mb'))} | {note.strip()} |"
        )
    return lines


def _md_scale(res: dict) -> list[str]:
    lines: list[str] = []
    scale = [r for r in res["rows"] if r["kind"] == "scale"]
    if scale:
        src = next((r.get("source") for r in scale if r.get("source")), "")
        lines += [
            "",
            "## Scale",
            "",
            f"Archives made by hard links ({src}); page cache warm (the links were just made).",
            "",
            "| files | measurement | seconds | files/s or img/s | peak RSS MiB |",
            "|---|---|---|---|---|",
        ]
        for r in scale:
            secs = f"{r['seconds']:.2f}" if r.get("seconds") is not None else "–"
            extra = f" (failed: {str(r['error'])[:120]})" if r.get("error") else ""
            lines.append(
                f"| {r.get('files', 0):,} | {r['name']}{extra} | {secs} | {fmt_rate(r.get('median'))} | {fmt_rate(r.get('peak_rss_mb'))} |"
            )
        lines += [
            "",
            "`discover (count)`: octbatch.archive.discover alone. `discover (keys)`: discovery while holding the per-file "
            "key set that `octbatch run` keeps (its memory at that archive size, before any inference).",
        ]
    return lines


def _md_charts(res: dict) -> list[str]:
    lines: list[str] = []
    charts = res.get("charts")
    lines += [""]
    if isinstance(charts, list) and charts:
        lines += ["## Charts", ""] + [f"![{Path(c).stem}]({Path(c).name})" for c in charts]
    elif isinstance(charts, str):
        lines.append(f"Charts: {charts}")
    lines.append("")
    return lines


def render_charts(res: dict, outdir: str | os.PathLike) -> tuple[list[str], str]:
    """PNG charts next to the summary. Returns (paths, note); no matplotlib -> ([], why)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return [], "skipped (matplotlib is not installed: pip install matplotlib)"
    from ..report.charts import figure  # the HTML report's figures: matplotlib's object API, no pyplot state

    outdir = Path(outdir)
    paths = [p for p in (_throughput_chart(res, outdir, figure), _scaling_chart(res, outdir, figure)) if p]
    return paths, ""


def _throughput_chart(res: dict, outdir: Path, figure) -> str | None:
    """throughput.png: every img/s row as a bar (median, min-max), the combined ceiling as a line."""
    rows, d = res["rows"], res["derived"]
    bars = []
    for r in rows:
        if r.get("median") is None or r["kind"] == "scale" or r.get("unit") != "img/s":
            continue
        label = (
            r["name"]
            if r["kind"] not in ("stage", "ceiling")
            else f"{r['name']} {r.get('decoder') or r.get('backend', '')} "
            + (f"x{r['threads']}" if r["name"] == "decode" else f"b{r.get('batch_size')}")
            + (f" ({r['when']} e2e)" if r.get("when") else "")
        )
        bars.append((label, r["median"], r.get("min", r["median"]), r.get("max", r["median"]), r["kind"]))
    if not bars:
        return None
    colors = {
        "stage": "#8fa8c8",
        "ceiling": "#5b7fae",
        "e2e": "#2a6f3a",
        "baseline": "#c0504d",
        "experiment": "#d9a441",
    }
    fig = figure(8, 0.35 * len(bars) + 1.5)
    ax = fig.subplots()
    ys = range(len(bars))
    ax.barh(
        list(ys),
        [b[1] for b in bars],
        color=[colors[b[4]] for b in bars],
        xerr=[[b[1] - b[2] for b in bars], [b[3] - b[1] for b in bars]],
        capsize=2,
    )
    ax.set_yticks(list(ys), [b[0] for b in bars], fontsize=8)
    ax.invert_yaxis()
    if d.get("combined_ceiling"):
        ax.axvline(
            d["combined_ceiling"], color="k", ls="--", lw=1, label=f"combined ceiling {d['combined_ceiling']:.0f}"
        )
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("images per second (median, min–max)")
    ax.set_title("octbatch bench: stages, end to end, baselines", fontsize=10)
    p = outdir / "throughput.png"
    fig.savefig(p, dpi=90)
    return str(p)


def _scaling_chart(res: dict, outdir: Path, figure) -> str | None:
    """scaling.png: discovery seconds and peak RSS against archive size."""
    rows = res["rows"]
    scale = [
        r for r in rows if r["kind"] == "scale" and r.get("seconds") is not None and r["name"].startswith("discover")
    ]
    if not scale:
        return None
    fig = figure(9, 3.4)
    a1, a2 = fig.subplots(1, 2)
    for mode in sorted({r["name"] for r in scale}):
        pts = sorted((r["files"], r["seconds"], r.get("peak_rss_mb") or 0) for r in scale if r["name"] == mode)
        a1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=mode)
        a2.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=mode)
    for a, yl in ((a1, "discovery seconds"), (a2, "peak RSS (MiB)")):
        a.set_xscale("log")
        a.set_xlabel("files in archive")
        a.set_ylabel(yl)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    a1.set_yscale("log")
    fig.suptitle("octbatch bench: scaling", fontsize=10)
    p = outdir / "scaling.png"
    fig.savefig(p, dpi=90)
    return str(p)
