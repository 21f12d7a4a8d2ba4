"""The shipped default model: self-describing, loadable, and as accurate as its card says."""

import csv
import json

import pyarrow.parquet as pq
import pytest
from conftest import DATA_DIR, REPO

from octbatch import RunConfig, run
from octbatch.model import file_sha256, load_model_info

METRICS = json.loads((REPO / "engines" / "metrics.json").read_text())


def test_shipped_model_is_self_describing(shipped_model):
    m = load_model_info(shipped_model)
    assert m.classes == ("CNV", "DME", "DRUSEN", "NORMAL")
    assert m.preprocessing.input_size == (128, 128) and m.preprocessing.channels == 1
    assert m.preprocessing.resize == "center_crop"
    assert m.output_kind == "logits"
    assert "not a medical device" in m.card.lower() or "not for diagnosis" in m.card.lower()
    assert file_sha256(shipped_model) == METRICS["sha256"], "engines/metrics.json describes another model file"


@pytest.mark.data
def test_shipped_model_reaches_its_card_accuracy_on_the_report_only_scans(tmp_path, shipped_model):
    """Through `octbatch run` itself: the accuracy the card states for split_hint test/val scans."""
    s = run(RunConfig(archive=str(DATA_DIR), out=str(tmp_path / "r.parquet")))
    assert s.rows == 2400 and s.errors == 0
    preds = {r["path"]: r for r in pq.read_table(tmp_path / "r.parquet", columns=["path", "label", "pred"]).to_pylist()}
    with open(DATA_DIR / "manifest.csv") as f:
        report = [r for r in csv.DictReader(f) if r["split_hint"] in ("test", "val")]
    assert len(report) == METRICS["evaluation"]["report_only"]["n"]
    correct = sum(preds[r["path"]]["pred"] == r["label"] for r in report)
    for r in report:
        assert preds[r["path"]]["label"] == r["label"]  # names and folders parse to the manifest's labels
    accuracy = correct / len(report)
    stated = METRICS["evaluation"]["report_only"]["accuracy"]
    assert accuracy >= stated - 0.005, (accuracy, stated)
