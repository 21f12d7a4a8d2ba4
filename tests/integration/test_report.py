import json

from click.testing import CliRunner

from octbatch.cli import cli
from octbatch.synth import make_archive


def test_report_counts_predictions_errors_and_accuracy(tmp_path, tiny_model):
    make_archive(tmp_path / "a", 20, broken=True)
    out = tmp_path / "r.parquet"
    r = CliRunner().invoke(cli, ["run", str(tmp_path / "a"), "--out", str(out), "--model", tiny_model, "-q"])
    assert r.exit_code == 3
    r = CliRunner().invoke(cli, ["report", str(out), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert (s["rows"], s["ok"], s["not_ok"], s["labelled"]) == (23, 20, 3, 20)
    assert sum(s["predicted"].values()) == 20
    assert sum(sum(row.values()) for row in s["confusion"].values()) == 20
    assert s["accuracy"] == sum(s["confusion"][c][c] for c in s["classes"]) / 20
    assert set(s["errors"]) == {"empty file", "not a recognised image", "truncated JPEG"}
    text = CliRunner().invoke(cli, ["report", str(out)]).output
    assert "23 rows, 20 classified, 3 not readable" in text and "accuracy" in text


def test_report_on_a_missing_or_foreign_file_is_a_user_error(tmp_path):
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "nope.parquet")])
    assert r.exit_code == 1 and "does not exist" in r.output
    (tmp_path / "x.parquet").write_bytes(b"junk")
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "x.parquet")])
    assert r.exit_code == 1 and "not an octbatch results table" in r.output
