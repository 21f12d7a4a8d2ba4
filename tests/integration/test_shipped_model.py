"""The shipped default model: self-describing, loadable, and as accurate as its card says."""

import csv
import json

import pyarrow.parquet as pq
import pytest

from octbatch import RunConfig, run
from octbatch.model import file_sha256, load_model_info
from tests.helpers.files import DATA_DIR, REPO

METRICS = json.loads((REPO / "engines" / "metrics.json").read_text())


def test_shipped_model_is_self_describing(shipped_model):
    m = load_model_info(shipped_model)
    assert m.classes == ("CNV", "DME", "DRUSEN", "NORMAL")
    assert m.preprocessing.input_size == (128, 128) and m.preprocessing.channels == 1
    assert m.preprocessing.resize == METRICS["preprocessing"]["resize"]
    assert abs(float(m.metadata["octbatch.temperature"]) - METRICS["temperature"]) < 1e-3  # calibrated outputs
    assert m.output_kind == "logits"
    assert "not a medical device" in m.card.lower() or "not for diagnosis" in m.card.lower()
    assert file_sha256(shipped_model) == METRICS["sha256"], "engines/metrics.json describes another model file"


@pytest.mark.data
def test_shipped_model_reaches_its_card_accuracy_on_kermanys_test_set(tmp_path, shipped_model):
    """Through `octbatch run` itself, as a user would: the card's numbers on the report-only sets
    (Kermany's official test set, split_hint test-v3, and the Kaggle copy's test + val)."""
    with open(DATA_DIR / "manifest.csv") as f:
        manifest = list(csv.DictReader(f))
    s = run(RunConfig(archive=str(DATA_DIR), out=str(tmp_path / "r.parquet")))
    assert s.rows == len(manifest) and s.errors == 0
    preds = {r["path"]: r for r in pq.read_table(tmp_path / "r.parquet", columns=["path", "label", "pred"]).to_pylist()}
    for name, hints in (("test_v3", ("test-v3",)), ("test_val", ("test", "val"))):
        report = [r for r in manifest if r["split_hint"] in hints]
        stated = METRICS["evaluation"][name]
        assert len(report) == stated["n"], name
        for r in report:
            assert preds[r["path"]]["label"] == r["label"]  # names and folders parse to the manifest's labels
        accuracy = sum(preds[r["path"]]["pred"] == r["label"] for r in report) / len(report)
        assert abs(accuracy - stated["accuracy"]) <= 0.005, (name, accuracy, stated["accuracy"])


def test_model_card_is_rendered_from_its_data_files():
    """engines/README.md is exactly what octbatch.train_card renders from metrics.json and the experiment files."""
    from octbatch.train_card import render_card

    load = lambda p: json.loads((REPO / p).read_text())  # noqa: E731
    card = render_card(
        METRICS,
        width=load("benchmarks/width_experiment.json"),
        sizes=load("benchmarks/model_sizes.json"),
        curve=load("benchmarks/learning_curve.json"),
        candidates=load("benchmarks/v2_candidates.json"),
    )
    assert (REPO / "engines" / "README.md").read_text() == card
    assert f"accuracy **{METRICS['evaluation']['test_v3']['accuracy']:.3f}**" in card
