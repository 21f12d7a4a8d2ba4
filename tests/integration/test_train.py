"""octbatch.train on a tiny synthetic Kermany-style folder: one epoch, export, reload, infer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]


def _write_dataset(root: Path, *, patients: int = 3, images: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, cls in enumerate(CLASSES):
        for p in range(patients):
            pid = 1000 * (k + 1) + p
            for n in range(1, images + 1):
                h, w = 62, 64 + 32 * (n % 2)  # wide and narrow scans, like the real sample
                a = rng.integers(0, 60, (h, w)).astype(np.uint8)
                a[20 + 4 * k : 26 + 4 * k, :] = 200  # a bright "layer" whose depth depends on the class
                Image.fromarray(a, "L").save(root / f"{cls}-{pid}-{n}.jpeg", quality=90)
    # a renamed copy without a patient id: training side only
    Image.fromarray(rng.integers(0, 255, (62, 64)).astype(np.uint8), "L").save(root / "NORMAL-unknown-0a1b2c3d.jpeg")


def test_import_does_not_load_torch():
    code = "import sys, octbatch.train; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_train_one_epoch_exports_loadable_model(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from octbatch.backends.onnxrt import OnnxRuntimeRunner
    from octbatch.decode.cpu import CpuDecoder
    from octbatch.model import load_model_info
    from octbatch.preprocess import normalize_into
    from octbatch.train import DEFAULTS, train

    data = tmp_path / "data"
    data.mkdir()
    _write_dataset(data)
    out = tmp_path / "m.onnx"
    lines: list[str] = []
    metrics = train(
        data,
        out,
        epochs=1,
        seed=0,
        input_size=32,
        batch_size=16,
        threads=1,
        log=lines.append,
        benchmark=False,
        report_dir=tmp_path / "rep",
    )

    # split: patient-wise, nothing shared between train and validation
    counts = metrics["split"]["counts"]
    assert sum(counts["val"].values()) > 0 and sum(counts["train"].values()) > 0
    assert metrics["split"]["train_without_patient_id"] == 1
    assert metrics["parameters"] > 10_000
    assert (tmp_path / "rep" / "metrics.json").is_file()
    for png in (
        "training_curves.png",
        "confusion_validation.png",
        "reliability_validation.png",
        "samples_validation.png",
    ):
        from PIL import Image

        with Image.open(tmp_path / "rep" / png) as im:  # a real, non-empty picture
            assert im.width > 200 and im.height > 200 and im.convert("L").getextrema() != (255, 255)
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["classes"] == CLASSES
    assert "validation" in metrics["evaluation"] and "test_v3" not in metrics["evaluation"]
    v = metrics["evaluation"]["validation"]
    assert "ece" in v and "ece_uncalibrated" in v and v["referral"]["urgent_n"] > 0
    assert [h["epoch"] for h in metrics["history"]] == [1] and "train_accuracy" in metrics["history"][0]

    info = load_model_info(out)
    assert list(info.classes) == CLASSES
    assert info.output_kind == "logits"
    spec = info.preprocessing
    assert spec.input_size == (32, 32) and spec.channels == 1 and spec.resize == DEFAULTS["resize"]
    # the fitted temperature is baked into the graph and recorded beside it
    assert float(info.metadata["octbatch.temperature"]) == pytest.approx(metrics["temperature"], rel=1e-3)
    assert 0.0 < spec.mean[0] < 1.0 and 0.0 < spec.std[0] < 1.0
    assert spec.mean == tuple(metrics["preprocessing"]["mean"])
    assert "not a medical device" in info.card

    paths = sorted(str(p) for p in data.glob("*.jpeg"))[:5]
    with CpuDecoder(spec, threads=1) as dec:
        batch = dec.decode_batch(paths)
    assert batch.ok.all()
    x = normalize_into(np.empty((len(paths), 1, 32, 32), np.float32), batch.images, spec)
    with OnnxRuntimeRunner(info, threads=1) as runner:
        probs = runner.infer(x)
    assert probs.shape == (len(paths), 4)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_split_keeps_patients_and_report_rows_apart():
    from octbatch.train import Record, split_records

    recs = []
    for cls in CLASSES:
        for p in range(8):
            for n in range(3):
                recs.append(Record(path=f"/x/{cls}-{p}-{n}", rel="", label=cls, patient_id=f"{cls[0]}{p}"))
    recs.append(Record(path="/x/a", rel="", label="CNV", patient_id="C0", split_hint="test"))
    recs.append(Record(path="/x/b", rel="", label="DME", patient_id="", split_hint="unknown"))
    split_records(recs, val_fraction=0.25, seed=1)
    train_p = {r.patient_id for r in recs if r.role == "train" and r.patient_id}
    val_p = {r.patient_id for r in recs if r.role == "val"}
    assert val_p and train_p and not (train_p & val_p)
    assert all(r.role == "excluded" for r in recs if r.patient_id == "C0" and r.split_hint != "test")
    assert recs[-2].role == "report" and recs[-1].role == "train"
    for cls in CLASSES:
        assert any(r.role == "val" and r.label == cls for r in recs)


def test_strip_crops_match_the_inference_decoder_for_both_rules(tmp_path):
    """Training crops strips; inference crops scans: both rules must give (nearly) the same 32x32 image."""
    torch = pytest.importorskip("torch")
    from PIL import Image

    from octbatch.decode.cpu import decode_image
    from octbatch.preprocess import Preprocessing
    from octbatch.train import Record, _crop_strips, decode_strips

    rng = np.random.default_rng(3)
    a = (rng.random((62, 192)) * 40).astype(np.uint8)
    a[:, :64] += 150  # a bright left third: a centre crop and a stretch differ a lot
    a[20:30, :] = 255
    path = tmp_path / "CNV-1-1.jpeg"
    Image.fromarray(a, "L").save(path, quality=95)
    rec = Record(path=str(path), rel=path.name, label="CNV", patient_id="1")
    strips, widths, ok = decode_strips([rec], 32, threads=1)
    assert ok.all() and widths[0] == round(32 * 192 / 62)
    gen = torch.Generator().manual_seed(0)
    for rule in ("center_crop", "stretch"):
        mine = (
            _crop_strips(torch, strips, widths, [0], out_hw=(32, 32), resize=rule, lateral=None, gen=gen)[0, 0].numpy()
            * 255
        )
        ref, _ = decode_image(path.read_bytes(), Preprocessing(input_size=(32, 32), resize=rule))
        assert np.abs(mine - ref.astype(float)).mean() < 6.0, rule
    # a lateral factor of 2 shows half as many A-scans: the stretched crop then matches a centre crop of half the width
    wide = (
        _crop_strips(torch, strips, widths, [0], out_hw=(32, 32), resize="stretch", lateral=(2.0, 2.0), gen=gen)[
            0, 0
        ].numpy()
        * 255
    )
    half = a[:, 48:144]
    ref = np.asarray(Image.fromarray(half).resize((32, 32), Image.BOX), float)
    assert np.abs(wide - ref).mean() < 8.0


def test_train_cli_refuses_a_bad_lateral_scale_before_loading_anything(tmp_path):
    from click.testing import CliRunner

    from octbatch.cli import cli

    res = CliRunner().invoke(cli, ["train", str(tmp_path), "--out", str(tmp_path / "m.onnx"), "--lateral-scale", "2,1"])
    assert res.exit_code == 1
    assert "Error: --lateral-scale '2,1' is out of range. Use 0 < LO <= HI, e.g. 0.6,1.6." in res.output
