"""octbatch bench: measurement helpers, report rendering, and the --quick smoke run users type."""

from __future__ import annotations

import copy
import json
import math

import pytest
from click.testing import CliRunner

from octbatch.bench import combined_ceiling, efficiency, measure_rate, summarize
from octbatch.bench_report import render_charts, render_markdown
from octbatch.cli import cli
from tests.helpers.bench_results import fixed_result


# --------------------------------------------------------------------------------------------- helpers
def test_summarize_median_and_spread():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["median"] == 3.0
    assert (s["min"], s["max"]) == (1.0, 5.0)
    assert (s["q1"], s["q3"]) == (2.0, 4.0)
    assert s["n"] == 5
    assert s["samples"] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_summarize_even_count_and_single_sample():
    assert summarize([4, 1, 3, 2])["median"] == 2.5
    one = summarize([7.5])
    assert one["median"] == one["min"] == one["max"] == one["q1"] == one["q3"] == 7.5
    with pytest.raises(ValueError):
        summarize([])


def test_combined_ceiling_cpu_adds_per_item_costs():
    # 1 ms decode + 1 ms inference on shared cores: 2 ms per image.
    assert combined_ceiling(1000, 1000) == pytest.approx(500)
    assert combined_ceiling(2600, 1600) == pytest.approx(1 / (1 / 2600 + 1 / 1600))
    assert combined_ceiling(2600, 1600) < min(2600, 1600)


def test_combined_ceiling_gpu_is_the_slower_stage():
    assert combined_ceiling(2600, 1600, shared_cores=False) == 1600
    assert combined_ceiling(0, 1600) == 0.0


def test_efficiency():
    assert efficiency(450, 500) == pytest.approx(0.9)
    assert efficiency(450, 0) is None


def test_measure_rate_counts_items_over_min_duration():
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        return 10

    s = measure_rate(fn, min_seconds=0.01, repeats=3, warmup=2)
    assert s["n"] == 3
    assert calls["n"] >= 2 + 3  # warm-up calls, then at least one per repeat
    assert s["min"] > 0 and s["min"] <= s["median"] <= s["max"]


# --------------------------------------------------------------------------------------------- report
def test_render_markdown_from_fixed_json():
    md = render_markdown(fixed_result())
    assert "Test CPU 9000" in md and "onnxruntime 1.0" in md
    assert "**990 img/s**" in md  # the combined ceiling
    assert "**900 img/s = 91% of the combined ceiling**" in md
    assert "octbatch vs naive: **1.84x**" in md
    assert "| naive | 489 | 440–538 | 49% | 1.84x | 250 |" in md
    assert "without ray.init: 240 img/s" in md
    assert "| dataloader | – |" in md and "torch missing" in md
    assert "| 1,000,000 | discover (count) | 9.50 |" in md
    # The fixed dict is rendered, not mutated.
    res = fixed_result()
    before = copy.deepcopy(res)
    render_markdown(res)
    assert res == before


def test_render_markdown_says_when_charts_were_skipped():
    res = fixed_result()
    res["charts"] = "skipped (matplotlib is not installed: pip install matplotlib)"
    assert "Charts: skipped (matplotlib is not installed" in render_markdown(res)


def test_render_charts_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    paths, note = render_charts(fixed_result(), tmp_path)
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    assert names == ["scaling.png", "throughput.png"] and note == ""
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_render_charts_without_matplotlib(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mpl(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    paths, note = render_charts(fixed_result(), tmp_path)
    assert paths == [] and "matplotlib is not installed" in note
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- CLI
def test_bench_rejects_archive_and_synthetic_together(tmp_path):
    r = CliRunner().invoke(
        cli, ["bench", "--archive", str(tmp_path), "--synthetic", "10", "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 1
    assert "Error: --archive and --synthetic are exclusive" in r.output


def test_bench_help_lists_the_options():
    r = CliRunner().invoke(cli, ["bench", "--help"])
    assert r.exit_code == 0
    for opt in (
        "--archive",
        "--synthetic",
        "--model",
        "--engine",
        "--backends",
        "--decoders",
        "--batch-sizes",
        "--executors",
        "--min-seconds",
        "--repeats",
        "--out",
        "--quick",
        "--scale",
    ):
        assert opt in r.output


@pytest.mark.slow
def test_bench_quick_produces_json_markdown_and_charts(tmp_path):
    from tests.helpers.modelgen import tiny_classifier

    model = tiny_classifier(tmp_path / "tiny.onnx", classes=("CNV", "DME", "DRUSEN", "NORMAL"), size=32)
    out = tmp_path / "report"
    r = CliRunner().invoke(
        cli, ["bench", "--quick", "--synthetic", "40", "--model", model, "--out", str(out), "--scale", "300", "-q"]
    )
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    kinds = {(row["kind"], row["name"]) for row in res["rows"]}
    for want in [
        ("stage", "discovery"),
        ("stage", "read"),
        ("stage", "decode"),
        ("stage", "infer"),
        ("stage", "parquet_write"),
        ("e2e", "octbatch run (local)"),
        ("baseline", "naive"),
        ("scale", "discover (count)"),
        ("scale", "discover (keys)"),
    ]:
        assert want in kinds
    e2e = next(row for row in res["rows"] if row["kind"] == "e2e")
    assert e2e["files"] == 43  # 40 scans + the 3 broken files, each with a row
    assert e2e["median"] > 0 and e2e["peak_rss_mb"] > 0
    assert all(row["versions"]["octbatch"] and row["machine"] for row in res["rows"])
    scale = [row for row in res["rows"] if row["kind"] == "scale"]
    assert all(row["files"] == 300 for row in scale)
    d = res["derived"]
    assert math.isclose(d["combined_ceiling"], 1 / (1 / d["decode_ceiling"] + 1 / d["infer_ceiling"]))
    assert res["archive"].startswith("synthetic")
    md = (out / "summary.md").read_text()
    assert "## Stage ceilings" in md and "octbatch run (local)" in md and "## Scale" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "Charts: skipped" in md
    else:
        assert (out / "throughput.png").stat().st_size > 1000
        assert (out / "scaling.png").stat().st_size > 1000
    from octbatch._deps import is_available

    if is_available("jinja2"):  # the report extra: one HTML page with the same summary and charts inlined
        html = (out / "report.html").read_text()
        assert "Stage ceilings" in html and ("data:image/png;base64," in html) == is_available("matplotlib")
