"""The HTML report and the numbers behind it: golden values on a table with known answers, hostile names,
no network, streaming in small batches, and a real headless Chromium opening the report from disk."""

import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from octbatch.cli import cli
from octbatch.report import aggregate, summarize, write_html
from octbatch.report.referral import csv_text, referrals
from octbatch.report.thumbs import thumbnail
from octbatch.results import make_schema

pytest.importorskip("jinja2")
pytest.importorskip("matplotlib")

CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]
# (label, pred, confidence, patient, status, error) -- confidences sit in distinct reliability bins
GOLDEN = [
    ("CNV", "CNV", 0.95, "P1", "ok", None),
    ("CNV", "DME", 0.85, "P1", "ok", None),
    ("DME", "DME", 0.75, "P2", "ok", None),
    ("DRUSEN", "NORMAL", 0.65, "P3", "ok", None),
    ("NORMAL", "NORMAL", 0.95, "P4", "ok", None),
    ("NORMAL", "NORMAL", 0.95, "P4", "ok", None),
    ("DRUSEN", "DRUSEN", 0.55, "P5", "ok", None),
    ("NORMAL", "DRUSEN", 0.45, "P3", "ok", None),
    (None, "CNV", 0.99, "P6", "ok", None),  # no label: counted as predicted, not in the confusion matrix
    ("CNV", None, None, "P7", "error", "truncated JPEG (premature end of data)"),
    ("DME", None, None, "P7", "error", "truncated JPEG (bad Huffman code)"),
    ("NORMAL", None, None, None, "failed", "shard failed on every retry: worker died"),
    ("CNV", "CNV", 0.90, "P8", "suspect", None),  # a status this version does not know: counted, not classified
]


def golden_table(path: Path, row_group_size: int = 3) -> Path:
    n = len(GOLDEN)
    probs = {c: [None if r[2] is None else (r[2] if r[1] == c else (1 - r[2]) / 3) for r in GOLDEN] for c in CLASSES}
    md = {
        "classes": CLASSES,
        "model_sha256": "ab" * 32,
        "model_path": "golden.onnx",
        "octbatch_version": "0.0.test",
        "archive_root": str(path.parent / "no-such-archive"),
        "written_at": "2026-01-01T00:00:00+00:00",
    }
    schema = make_schema(CLASSES, md)
    cols = {
        "path": [f"{r[0] or 'x'}/{r[0] or 'x'}-{r[3] or 'unknown'}-{i}.jpeg" for i, r in enumerate(GOLDEN)],
        "bytes": [1000] * n,
        "mtime": [0] * n,
        "label": [r[0] for r in GOLDEN],
        "patient_id": [r[3] for r in GOLDEN],
        "image_no": list(range(n)),
        "pred": [r[1] for r in GOLDEN],
        "confidence": [r[2] for r in GOLDEN],
        **{f"p_{c}": probs[c] for c in CLASSES},
        "status": [r[4] for r in GOLDEN],
        "error": [r[5] for r in GOLDEN],
        "width": [512] * n,
        "height": [496] * n,
        "model_sha256": ["ab" * 32] * n,
        "backend": ["onnxruntime"] * n,
        "precision": ["fp32"] * n,
        "decoder": ["cpu"] * n,
        "run_id": ["run-a"] * 6 + ["run-b"] * (n - 6),
        "processed_at": [0] * n,
    }
    cols["frame"] = [0] * n  # a DICOM-style frame number on every row: the report must not care
    for f in schema:  # the other provenance columns of the schema (DICOM tags) stay null
        cols.setdefault(f.name, [None] * n)
    t = pa.Table.from_pydict(cols, schema=schema)
    # a column the schema does not know (a gate score) must not bother the report either
    if "oct_score" not in t.column_names:
        t = t.append_column("oct_score", pa.array(np.linspace(0, 1, n), pa.float32()))
    pq.write_table(t, path, row_group_size=row_group_size)
    return path


def test_golden_numbers_confusion_metrics_ece(tmp_path):
    a = aggregate(str(golden_table(tmp_path / "g.parquet")))
    assert a.rows == 13 and a.statuses == {"ok": 9, "error": 2, "failed": 1, "suspect": 1}
    assert a.predicted == {"CNV": 2, "DME": 2, "NORMAL": 3, "DRUSEN": 2}
    assert a.labelled == 8
    assert a.confusion.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 2]]
    assert a.accuracy == pytest.approx(5 / 8)
    m = {r["class"]: r for r in a.per_class()}
    assert (m["CNV"]["precision"], m["CNV"]["recall"]) == (1.0, 0.5)
    assert (m["DME"]["precision"], m["DME"]["recall"]) == (0.5, 1.0)
    assert m["NORMAL"]["precision"] == pytest.approx(2 / 3) and m["NORMAL"]["f1"] == pytest.approx(2 / 3)
    assert m["DRUSEN"]["f1"] == pytest.approx(0.5)
    # 15 bins of width 1/15: .95 -> bin 14 (three, all right); .85 -> 12 (wrong); .75 -> 11 (right); .65 -> 9 (wrong);
    # .55 -> 8 (right); .45 -> 6 (wrong)
    assert a.ece == pytest.approx((3 * 0.05 + 0.85 + 0.25 + 0.65 + 0.45 + 0.45) / 8, abs=1e-6)
    rel = a.reliability()
    assert [b["n"] for b in rel] == [0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 1, 1, 0, 3]
    assert rel[14]["accuracy"] == 1.0 and rel[12]["accuracy"] == 0.0 and rel[14]["confidence"] == pytest.approx(0.95)
    assert (
        a.errors[("error", "truncated JPEG")]["count"] == 2
        and a.errors[("failed", "shard failed on every retry")]["count"] == 1
    )
    assert a.errors[("suspect", "(no message)")]["count"] == 1
    assert a.provenance["run_id"] == {"run-a": 6, "run-b": 7}


def test_streaming_in_tiny_batches_gives_the_same_answers(tmp_path):
    p = str(golden_table(tmp_path / "g.parquet", row_group_size=2))
    whole, tiny = aggregate(p), aggregate(p, batch_rows=1)
    assert tiny.confusion.tolist() == whole.confusion.tolist() and tiny.ece == pytest.approx(whole.ece)
    assert (tiny.conf_hist == whole.conf_hist).all() and tiny.statuses == whole.statuses
    assert {k: v["count"] for k, v in tiny.errors.items()} == {k: v["count"] for k, v in whole.errors.items()}
    for name in whole.samples:
        assert tiny.samples[name].column("path").to_pylist() == whole.samples[name].column("path").to_pylist(), name
    assert referrals(tiny.patients, CLASSES) == referrals(whole.patients, CLASSES)


def test_samples_are_the_most_confident_mistakes_and_least_confident(tmp_path):
    a = aggregate(str(golden_table(tmp_path / "g.parquet")), top=2)
    assert a.samples["mistakes"].column("confidence").to_pylist() == pytest.approx([0.85, 0.65])
    assert a.samples["unsure"].column("confidence").to_pylist() == pytest.approx([0.45, 0.55])
    assert a.samples["class:CNV"].column("confidence").to_pylist() == pytest.approx([0.99, 0.95])


def test_referral_order_urgent_first_and_csv(tmp_path):
    a = aggregate(str(golden_table(tmp_path / "g.parquet")))
    rows = referrals(a.patients, CLASSES)
    # P1: CNV+DME (2 urgent scans); P6: CNV .99; P2: DME .75; P5: DRUSEN .55; P3: DRUSEN .45 + NORMAL; P4: NORMAL
    assert [r["patient_id"] for r in rows] == ["P1", "P6", "P2", "P5", "P3", "P4"]
    assert [r["referral"] for r in rows] == ["urgent"] * 3 + ["routine"] * 2 + ["observation"]
    assert rows[0]["worst_finding"] == "CNV" and rows[0]["level_scans"] == 2 and rows[0]["scans"] == 2
    assert "P7" not in {r["patient_id"] for r in rows}  # unreadable scans give no finding
    back = list(csv.DictReader(io.StringIO(csv_text(rows, CLASSES))))
    assert back[4] == {
        "patient_id": "P3",
        "referral": "routine",
        "worst_finding": "DRUSEN",
        "level_scans": "1",
        "level_confidence": "0.45",
        "scans": "2",
        "n_CNV": "0",
        "n_DME": "0",
        "n_DRUSEN": "1",
        "n_NORMAL": "1",
    }
    # a patient id that a spreadsheet would run as a formula is defused
    risky = list(csv.reader(io.StringIO(csv_text([{**rows[0], "patient_id": "=HYPERLINK(1)"}], CLASSES))))
    assert risky[1][0] == "'=HYPERLINK(1)" and len(risky) == 2


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [(tag, k, v) for k, v in attrs if k in ("src", "href", "srcset", "action", "data", "poster")]


def test_cli_html_is_self_contained_and_needs_no_network(tmp_path):
    g = golden_table(tmp_path / "g.parquet")
    out, ref = tmp_path / "r.html", tmp_path / "ref.csv"
    r = CliRunner().invoke(
        cli,
        ["report", str(g), "--html", str(out), "--referrals", str(ref), "--json", "--png-dir", str(tmp_path / "png")],
    )
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["statuses"]["suspect"] == 1 and s["ece"] == pytest.approx(0.35, abs=1e-6)
    assert "wrote the HTML report" in r.stderr
    html = out.read_text()
    p = _Refs()
    p.feed(html)
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    assert p.refs and all(v.startswith("data:image/") for t, k, v in p.refs if k == "src")
    assert all(v.startswith("#") for t, k, v in p.refs if k == "href")
    assert (
        sum(1 for t, k, v in p.refs if k == "src") == 4
    )  # predicted, confidence, confusion, reliability (no archive: no scans)
    assert "default-src 'none'" in html and "Not a medical device" in html
    assert (
        "status=suspect" in html and "truncated JPEG" in html and "no-such-archive" in html and "not reachable" in html
    )
    assert "run-a (6 rows)" in html or "run-b (7 rows), run-a (6 rows)" in html
    assert len(list(csv.DictReader(ref.open()))) == 6
    from PIL import Image

    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == ["confidence.png", "confusion.png", "predicted.png", "reliability.png"]
    assert all(Image.open(tmp_path / "png" / n).size[0] > 300 for n in pngs)


def test_referrals_needs_html_and_top_must_be_positive(tmp_path):
    g = golden_table(tmp_path / "g.parquet")
    r = CliRunner().invoke(cli, ["report", str(g), "--referrals", str(tmp_path / "x.csv")])
    assert r.exit_code == 1 and "--html" in r.output
    r = CliRunner().invoke(cli, ["report", str(g), "--html", str(tmp_path / "x.html"), "--top", "0"])
    assert r.exit_code == 1 and "--top" in r.output and not (tmp_path / "x.html").exists()


def test_a_table_without_labels_patients_or_metadata(tmp_path):
    p = tmp_path / "user.parquet"
    pq.write_table(
        pa.table(
            {
                "path": ["a.png", "b.png", "c.png"],
                "pred": ["cat", "dog", None],
                "confidence": [0.9, 0.6, None],
                "status": ["ok", "ok", "error"],
                "error": [None, None, "empty file (0 bytes)"],
            }
        ),
        p,
    )
    s = summarize(str(p))
    assert s["classes"] == ["cat", "dog"] and s["predicted"] == {"cat": 1, "dog": 1} and "accuracy" not in s
    write_html(str(p), str(tmp_path / "u.html"))
    html = (tmp_path / "u.html").read_text()
    assert "has no label column" in html and "has no patient_id column" in html and "empty file" in html


def test_hostile_file_names_show_as_text(tmp_path, tiny_model):
    from octbatch.synth import make_archive

    arch = tmp_path / "a"
    make_archive(arch, 8, broken=False)
    evil = arch / "<script>alert(1)<"  # a path '<script>alert(1)</script>.jpeg'
    evil.mkdir()
    (evil / "script>.jpeg").write_bytes(b"")  # unreadable: listed with its error
    good = next((arch / "CNV").glob("*.jpeg"))
    (arch / "CNV" / "<img src=x onerror=alert(2)>.jpeg").write_bytes(good.read_bytes())
    out = tmp_path / "r.parquet"
    r = CliRunner().invoke(cli, ["run", str(arch), "--out", str(out), "--model", tiny_model, "-q"])
    assert r.exit_code == 3, r.output
    res = write_html(str(out), str(tmp_path / "r.html"), top=50)
    html = (tmp_path / "r.html").read_text()
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.jpeg" in html and "&lt;img src=x onerror=alert(2)&gt;.jpeg" in html
    assert res["aggregate"].rows == 10
    # every sample scan has its thumbnail: the archive root comes from the table
    assert html.count('src="data:image/jpeg;base64,') >= 9


def test_thumbnail_never_leaves_the_archive_and_survives_broken_files(tmp_path):
    from tests.helpers.files import jpeg_bytes, scan

    (tmp_path / "arch").mkdir()
    (tmp_path / "outside.jpeg").write_bytes(jpeg_bytes(scan(1)))
    (tmp_path / "arch" / "bad.jpeg").write_bytes(b"\xff\xd8junk")
    (tmp_path / "arch" / "ok.jpeg").write_bytes(jpeg_bytes(scan(2)))
    root = str(tmp_path / "arch")
    assert thumbnail(root, "../outside.jpeg") == (None, "path leads outside the archive")
    assert thumbnail(root, str(tmp_path / "outside.jpeg"))[0] is None
    uri, why = thumbnail(root, "bad.jpeg")
    assert uri is None and "cannot read" in why
    uri, _ = thumbnail(root, "ok.jpeg")
    import base64

    from PIL import Image

    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert im.mode == "L" and max(im.size) <= 168


# ---- a real browser -------------------------------------------------------------------------------------------------


def _chromium():
    from tests.helpers.chromium_cdp import find_chromium

    b = find_chromium()
    if not b:
        pytest.skip(
            "no headless Chromium on this machine (.ci/run installs Debian's chromium package; apt-get install chromium)"
        )
    return b


def _non_blank(png: bytes) -> tuple[tuple[int, int], float, int]:
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("L")
    px = np.asarray(im)
    return im.size, float((px < 240).mean()), len(np.unique(px))


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path, tiny_model):
    from octbatch.synth import make_archive
    from tests.helpers.chromium_cdp import open_page
    from tests.helpers.files import keep_artifact

    binary = _chromium()
    arch = tmp_path / "a"
    make_archive(arch, 24, broken=True)
    evil = arch / "<script>alert(1)<"
    evil.mkdir()
    (evil / "script>.jpeg").write_bytes(b"")
    out = tmp_path / "r.parquet"
    assert CliRunner().invoke(cli, ["run", str(arch), "--out", str(out), "--model", tiny_model, "-q"]).exit_code == 3
    html = tmp_path / "report.html"
    write_html(str(out), str(html), referrals_csv=str(tmp_path / "ref.csv"))
    page = open_page(binary, html.as_uri(), width=1280, height=900)
    shot = keep_artifact("report-screenshot.png", page["png"])
    print(f"screenshot of the report: {shot}")
    (w, h), ink, levels = _non_blank(page["png"])
    assert (w, h) == page["size"] and w == 1280 and h > 2000, (w, h)  # the full page, at the viewport's width
    assert ink > 0.05 and levels > 50, (ink, levels)  # text, charts and scans drawn, not a blank page
    assert page["console_errors"] == [] and page["dialogs"] == [] and page["scripts"] == 0
    assert len(page["images"]) >= 10
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in page["images"]), page["images"]
    assert {u.split(":", 1)[0] for u in page["requests"]} <= {"file", "data"}, page["requests"]


@pytest.mark.slow
def test_the_browser_check_sees_broken_images_and_console_errors(tmp_path):
    """The negative control of the test above: a page with a missing image and a console error fails it."""
    from tests.helpers.chromium_cdp import open_page

    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><p>x</p><img src="missing.png"><script>console.error("boom")</script>')
    page = open_page(_chromium(), bad.as_uri())
    assert any("boom" in e for e in page["console_errors"])
    assert page["images"] and not page["images"][0]["width"]


def test_bench_results_render_as_one_html_page_with_the_report_template(tmp_path):
    from octbatch.bench_report import render_charts
    from octbatch.report.bench_html import bench_html
    from tests.helpers.bench_results import fixed_result

    res = fixed_result()
    res["archive"] = "<script>alert(1)</script> archive"
    charts, _ = render_charts(res, tmp_path)
    res["charts"] = charts
    html = bench_html(res, tmp_path)
    p = _Refs()
    p.feed(html)
    assert "script" not in p.tags and "&lt;script&gt;alert(1)&lt;/script&gt; archive" in html
    assert [v[:22] for t, k, v in p.refs if k == "src"] == ["data:image/png;base64,"] * 2
    assert "<strong>990 img/s</strong>" in html and "default-src 'none'" in html
    assert p.tags.count("table") == 3 and "<td>1.84x</td>" in html


def test_text_report_and_help_load_neither_matplotlib_nor_jinja2(tmp_path):
    import subprocess
    import sys

    g = golden_table(tmp_path / "g.parquet")
    code = f"""
import sys
from click.testing import CliRunner
from octbatch.cli import cli
assert CliRunner().invoke(cli, ['report', '--help']).exit_code == 0
r = CliRunner().invoke(cli, ['report', {str(g)!r}])
assert r.exit_code == 0, r.output
print([m for m in ('matplotlib', 'jinja2') if m in sys.modules])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_text_summary_pass_gives_the_same_numbers(tmp_path):
    p = str(golden_table(tmp_path / "g.parquet"))
    full, light = aggregate(p), aggregate(p, details=False)
    assert (
        light.confusion.tolist() == full.confusion.tolist()
        and light.ece == full.ece
        and light.statuses == full.statuses
    )
    assert {k: v["count"] for k, v in light.errors.items()} == {k: v["count"] for k, v in full.errors.items()}
    assert light.patients is None and light.samples == {} and light.provenance == {}


def test_a_sixteen_bit_scan_gets_a_visible_thumbnail(tmp_path):
    import base64

    from PIL import Image

    from tests.helpers.files import scan

    Image.fromarray(scan(5).astype(np.uint16) * 40).save(tmp_path / "s16.png")  # values up to ~10,000
    uri, why = thumbnail(str(tmp_path), "s16.png")
    px = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert why == "" and px.min() < 30 and px.max() > 200 and (px == 255).mean() < 0.5  # stretched, not clipped white


@pytest.mark.data
@pytest.mark.slow
def test_report_of_real_scans_shows_their_thumbnails(tmp_path, tiny_model):
    from tests.helpers.files import DATA_DIR

    out = tmp_path / "r.parquet"
    r = CliRunner().invoke(cli, ["run", str(DATA_DIR), "--out", str(out), "--model", tiny_model, "--limit", "60", "-q"])
    assert r.exit_code == 0, r.output
    res = write_html(str(out), str(tmp_path / "r.html"), referrals_csv=str(tmp_path / "ref.csv"))
    html = (tmp_path / "r.html").read_text()
    assert "Scans are not shown" not in html and html.count('src="data:image/jpeg;base64,') >= 20
    assert res["aggregate"].labelled == 60 and res["patients"] > 0  # Kermany names give labels and patients
