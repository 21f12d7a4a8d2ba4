"""octbatch.training's pure pieces: the one decode loop, the patient-wise split, metrics, synthetic negatives."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from octbatch.preprocess import Preprocessing
from octbatch.training.cache import decode_all, decode_cache
from octbatch.training.data import Record, split_records
from octbatch.training.gate_synth import SYNTH_KINDS, synth_negative
from octbatch.training.metrics import classification_metrics


def _scans(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(64, 48), (96, 48)]):
        p = tmp_path / f"CNV-{100 + i}-1.jpeg"
        Image.fromarray(np.full((h, w), 60 + 40 * i, np.uint8), "L").save(p, quality=90)
        paths.append(str(p))
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"not a jpeg")
    return paths + [str(bad)]


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_all_leaves_unreadable_files_out(tmp_path, threads):
    spec = Preprocessing(input_size=(32, 32), resize="stretch")
    images, ok, sizes = decode_all(_scans(tmp_path), spec, threads=threads)
    assert images.shape == (3, 32, 32) and images.dtype == np.uint8
    assert ok.tolist() == [True, True, False]
    assert sizes.tolist() == [[64, 48], [96, 48], [0, 0]]
    assert not images[2].any() and images[1].mean() > images[0].mean()


def test_decode_cache_fills_in_missing_sizes(tmp_path):
    paths = _scans(tmp_path)
    recs = [Record(p, p, "CNV", "1") for p in paths]
    recs[1].width, recs[1].height = 7, 5  # known sizes are kept
    _, ok = decode_cache(recs, Preprocessing(input_size=(32, 32)), threads=1)
    assert ok.tolist() == [True, True, False]
    assert [(r.width, r.height) for r in recs] == [(64, 48), (7, 5), (0, 0)]


def test_split_records_is_patient_wise_and_keeps_report_patients_out():
    recs = []
    for c in ("CNV", "DME", "DRUSEN", "NORMAL"):
        for p in range(8):
            for n in range(2):
                recs.append(Record(f"/x/{c}-{c}{p}-{n}", f"{c}-{c}{p}-{n}", c, f"{c}{p}"))
    recs.append(Record("/x/t", "t", "CNV", "CNV0", split_hint="test"))
    recs.append(Record("/x/u", "u", "DME", ""))
    out = split_records(recs, val_fraction=0.25, seed=0)
    by_pid: dict[str, set[str]] = {}
    for r in recs:
        by_pid.setdefault(r.patient_id, set()).add(r.role)
    assert recs[-2].role == "report" and recs[-1].role == "train"
    assert by_pid["CNV0"] == {"report", "excluded"}
    assert all(len(roles) == 1 for pid, roles in by_pid.items() if pid not in ("CNV0", ""))
    assert out["excluded_report_patient_scans"] == 2 and out["report_patients"] == 1
    assert out["counts"]["val"] and sum(out["counts"]["val"].values()) == 2 * out["val_patients"]
    assert split_records(recs, val_fraction=0.25, seed=0) == out  # deterministic for a seed


def test_classification_metrics():
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["A", "B"], groups=[512, 512, 768, 768])
    assert m["accuracy"] == 0.75 and m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["per_class"]["A"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert m["accuracy_by_width"]["512"] == {"n": 2, "accuracy": 0.5, "classes": {"A": 2}}


def test_every_synthetic_kind_is_a_uint8_image_and_unknown_kinds_are_refused():
    rng = np.random.default_rng(0)
    base = np.random.default_rng(1).integers(0, 255, (128, 192)).astype(np.uint8)
    for kind in SYNTH_KINDS:
        for bases in ((), (base,)):
            img = synth_negative(kind, rng, bases, 64, 96)
            assert img.dtype == np.uint8 and img.ndim == 2, kind
    with pytest.raises(ValueError, match="unknown synthetic kind 'nope'"):
        synth_negative("nope", rng)
