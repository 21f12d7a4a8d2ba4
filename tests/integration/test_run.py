"""`octbatch run` as users run it: CLI and real subprocesses on archives full of awkward files."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from octbatch.cli import cli
from tests.helpers.files import CLASSES, assert_awkward_rows, make_bad_archive


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


@pytest.fixture
def bad_archive(tmp_path):
    root = tmp_path / "archive"
    expected = make_bad_archive(root, good=40)
    return root, expected


def _check_table(out, expected_bad, good=40):
    t = pq.read_table(out)
    rows = {r["path"]: r for r in t.to_pylist()}
    assert len(rows) == t.num_rows, "duplicate paths"
    assert t.num_rows == good + len(expected_bad)
    assert_awkward_rows(rows, expected_bad)
    good_rows = [r for r in rows.values() if r["label"] and not r["path"].startswith(("bad/", "odd/"))]
    assert len(good_rows) == good
    for r in good_rows:
        assert r["status"] == "ok" and r["pred"] in CLASSES
        assert abs(sum(r[f"p_{c}"] for c in CLASSES) - 1) < 1e-4
        assert r["confidence"] == max(r[f"p_{c}"] for c in CLASSES)
        assert (r["width"], r["height"]) in ((512, 496), (768, 496))
    return t


def test_run_classifies_every_file_and_isolates_bad_ones(bad_archive, tmp_path, tiny_model):
    root, expected = bad_archive
    out = tmp_path / "out" / "results.parquet"
    res = invoke("run", root, "--out", out, "--model", tiny_model, "--batch-size", 8, "--json", "-q")
    assert res.exit_code == 3, res.output  # finished, some files unreadable
    summary = json.loads(res.stdout)
    t = _check_table(out, expected)
    assert summary["discovered"] == t.num_rows == summary["rows"]
    assert summary["errors"] == sum(1 for s, _ in expected.values() if s == "error")
    assert not os.path.exists(str(out) + ".parts") or not [
        p for p in os.listdir(str(out) + ".parts") if p.startswith("part-")
    ]


def test_output_schema_and_metadata_read_back(bad_archive, tmp_path, tiny_model):
    root, _ = bad_archive
    out = tmp_path / "r.parquet"
    invoke("run", root, "--out", out, "--model", tiny_model, "-q")
    pf = pq.ParquetFile(out)
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    names = pf.schema_arrow.names
    for col in [
        "path",
        "bytes",
        "mtime",
        "label",
        "patient_id",
        "image_no",
        "pred",
        "confidence",
        "p_CNV",
        "p_DME",
        "p_DRUSEN",
        "p_NORMAL",
        "status",
        "error",
        "width",
        "height",
        "model_sha256",
        "backend",
        "precision",
        "run_id",
        "processed_at",
        "oct_score",
        "gate_reason",
    ]:
        assert col in names
    md = json.loads(pf.schema_arrow.metadata[b"octbatch"])
    assert md["classes"] == list(CLASSES)
    assert md["preprocessing"]["input_size"] == [32, 32]
    assert md["archive_root"] == str(root)
    assert "octbatch_version" in md and md["model_sha256"]


def test_table_is_readable_by_pandas_polars_and_duckdb(bad_archive, tmp_path, tiny_model):
    root, expected = bad_archive
    out = tmp_path / "r.parquet"
    invoke("run", root, "--out", out, "--model", tiny_model, "-q")
    n = 40 + len(expected)
    pd = pytest.importorskip("pandas")
    assert len(pd.read_parquet(out)) == n
    pl = pytest.importorskip("polars")
    assert pl.read_parquet(out).filter(pl.col("status") == "ok").height == n - 4
    duckdb = pytest.importorskip("duckdb")
    assert duckdb.sql(f"select count(*) from '{out}' where status = 'error'").fetchall()[0][0] == 4


def test_unreadable_and_vanishing_files_get_error_rows(tmp_path, tiny_model, monkeypatch):
    from octbatch import pipeline, plan
    from octbatch.synth import make_archive

    root = tmp_path / "a"
    make_archive(root, 12, broken=False)
    locked = root / "CNV" / "CNV-1000-0.jpeg"
    vanishing = root / "DME" / "DME-1000-1.jpeg"
    real_open = os.open

    def guarded_open(path, *a, **kw):  # tests run as root, where chmod 000 still reads
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **kw)

    real_discover = plan.discover

    def discover_then_delete(*a, **kw):
        for e in real_discover(*a, **kw):
            yield e
            if e.abspath == str(vanishing):
                os.unlink(vanishing)

    monkeypatch.setattr("octbatch.decode.base.os.open", guarded_open)
    monkeypatch.setattr(plan, "discover", discover_then_delete)
    monkeypatch.setattr(pipeline, "_count_in_background", lambda *a, **k: None)
    out = tmp_path / "r.parquet"
    res = invoke("run", root, "--out", out, "--model", tiny_model, "-q", "--threads", 1)
    assert res.exit_code == 3, res.output
    rows = {r["path"]: r for r in pq.read_table(out).to_pylist()}
    assert rows["CNV/CNV-1000-0.jpeg"]["error"] == "cannot read file: permission denied"
    assert "disappeared" in rows["DME/DME-1000-1.jpeg"]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == 10


def test_real_subprocess_run_with_all_bad_inputs(bad_archive, tmp_path, tiny_model):
    root, expected = bad_archive
    out = tmp_path / "sub.parquet"
    p = subprocess.run(
        [sys.executable, "-m", "octbatch", "run", str(root), "--out", str(out), "--model", tiny_model, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 3, p.stderr
    assert "Traceback" not in p.stderr
    assert json.loads(p.stdout)["rows"] == 40 + len(expected)
    _check_table(out, expected)
    assert "unreadable" in p.stderr  # the end-of-run summary


def test_limit_include_exclude(bad_archive, tmp_path, tiny_model):
    root, _ = bad_archive
    out = tmp_path / "l.parquet"
    invoke("run", root, "--out", out, "--model", tiny_model, "--limit", 5, "-q")
    assert pq.read_table(out).num_rows == 5
    out2 = tmp_path / "i.parquet"
    invoke("run", root, "--out", out2, "--model", tiny_model, "--include", "CNV/*", "-q")
    assert {p.split("/")[0] for p in pq.read_table(out2).column("path").to_pylist()} == {"CNV"}
    out3 = tmp_path / "e.parquet"
    invoke("run", root, "--out", out3, "--model", tiny_model, "--exclude", "bad/*,odd/*", "-q")
    assert pq.read_table(out3).num_rows == 40


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-archive", "does not exist"),
        ("output-in-archive", "inside the archive"),
        ("unwritable-output", "cannot create the output folder"),
        ("missing-model", "does not exist"),
        ("invalid-model", "is not a valid ONNX model"),
        ("bad-shard", "is not i/N"),
    ],
)
def test_user_errors_print_error_and_how_to_fix_exit_1(case, message, tmp_path, tiny_model):
    archive = tmp_path / "a"
    archive.mkdir()
    out = tmp_path / "r.parquet"
    model = tiny_model
    extra = []
    if case == "missing-archive":
        archive = tmp_path / "nope"
    elif case == "output-in-archive":
        out = archive / "sub" / "r.parquet"
    elif case == "unwritable-output":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "r.parquet"
    elif case == "missing-model":
        model = tmp_path / "nope.onnx"
    elif case == "invalid-model":
        model = tmp_path / "bad.onnx"
        model.write_bytes(b"not onnx")
    elif case == "bad-shard":
        extra = ["--shard", "x"]
    p = subprocess.run(
        [sys.executable, "-m", "octbatch", "run", str(archive), "--out", str(out), "--model", str(model), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1, p.stderr
    assert p.stderr.startswith("Error: ") and message in p.stderr
    assert "Traceback" not in p.stderr


def test_output_that_is_a_directory_is_a_usage_error(tmp_path):
    (tmp_path / "a").mkdir()
    res = CliRunner().invoke(cli, ["run", str(tmp_path / "a"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.output


def test_existing_foreign_output_is_not_clobbered_without_overwrite(tmp_path, tiny_model):
    from octbatch.synth import make_archive

    make_archive(tmp_path / "a", 8, broken=False)
    out = tmp_path / "precious.parquet"
    out.write_bytes(b"user data")
    res = CliRunner().invoke(cli, ["run", str(tmp_path / "a"), "--out", str(out), "--model", tiny_model, "-q"])
    assert res.exit_code == 1 and "--overwrite" in res.output
    assert out.read_bytes() == b"user data"
    res = invoke("run", tmp_path / "a", "--out", out, "--model", tiny_model, "-q", "--overwrite")
    assert res.exit_code == 0 and pq.read_table(out).num_rows == 8


def test_models_without_metadata_need_and_take_overrides(tmp_path):
    from octbatch.synth import make_archive
    from tests.helpers.modelgen import tiny_classifier

    make_archive(tmp_path / "a", 8, broken=False)
    bare = tiny_classifier(
        tmp_path / "bare.onnx", classes=("x", "y"), size=24, channels=3, metadata=False, output_probs=True
    )
    res = CliRunner().invoke(cli, ["run", str(tmp_path / "a"), "--out", str(tmp_path / "r.parquet"), "--model", bare])
    assert res.exit_code == 1 and "--classes" in res.output
    res = invoke(
        "run",
        tmp_path / "a",
        "--out",
        tmp_path / "r.parquet",
        "--model",
        bare,
        "--classes",
        "healthy,sick",
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
        "-q",
    )
    assert res.exit_code == 0, res.output
    t = pq.read_table(tmp_path / "r.parquet")
    assert {"p_healthy", "p_sick"} <= set(t.column_names)
    md = json.loads(t.schema.metadata[b"octbatch"])
    assert md["preprocessing"]["channels"] == 3 and md["preprocessing"]["input_size"] == [24, 24]


def test_an_archive_without_images_gives_an_empty_table_and_a_warning(tmp_path, tiny_model):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("no scans here")
    res = CliRunner().invoke(
        cli, ["run", str(tmp_path / "a"), "--out", str(tmp_path / "r.parquet"), "--model", tiny_model]
    )
    assert res.exit_code == 0
    assert "no image files" in res.output
    t = pq.read_table(tmp_path / "r.parquet")
    assert t.num_rows == 0 and "p_CNV" in t.column_names


def test_shipped_model_is_the_default(tmp_path, shipped_model):
    from octbatch.synth import make_archive

    make_archive(tmp_path / "a", 8, broken=False)
    res = invoke("run", tmp_path / "a", "--out", tmp_path / "r.parquet", "--json", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"] == shipped_model


def test_python_run_uses_the_executor_it_is_given(bad_archive, tmp_path, tiny_model):
    """pipeline.run(cfg, executor=...): the caller's Executor gets the shards; the table is the same."""
    from octbatch.config import RunConfig, resolve
    from octbatch.executors import LocalExecutor
    from octbatch.pipeline import run

    class Recording(LocalExecutor):
        def __init__(self):
            super().__init__(max_shard_retries=0)
            self.shards = []

        def run(self, shards, cfg, parts_dir, **kw):
            shards = list(shards)
            self.shards.extend(s.id for s in shards)
            return super().run(shards, cfg, parts_dir, **kw)

    root, expected = bad_archive
    cfg = RunConfig(archive=str(root), out=str(tmp_path / "r.parquet"), model=tiny_model, shard_size=16, threads=1)
    rr = resolve(cfg)
    assert (rr.executor, rr.backend, rr.decoder, rr.threads) == ("local", "onnxruntime", "cpu", 1)
    assert rr.model.classes == ("CNV", "DME", "DRUSEN", "NORMAL")
    ex = Recording()
    s = run(cfg, executor=ex)
    assert len(ex.shards) == -(-s.processed // 16) and s.processed == s.discovered == 40 + len(expected)
    _check_table(tmp_path / "r.parquet", expected)
