"""The DALI decoder: its CPU twin end to end through `octbatch run --decoder dali`, per-file error
isolation when DALI fails a batch, parity with the CPU decoder, the device handoff path of the worker
(driven on the CPU by a stand-in for TensorRT), and the GPU decoder when a GPU is present."""

import ctypes
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tests.helpers.fakes import HostPointerRunner
from tests.helpers.files import CLASSES, DATA_DIR, assert_awkward_rows, jpeg_bytes, make_bad_archive, scan

pytest.importorskip("nvidia.dali", reason="nvidia.dali is not installed (pip install 'octbatch[dali]')")

from octbatch.cli import cli  # noqa: E402
from octbatch.decode.cpu import CpuDecoder  # noqa: E402
from octbatch.decode.dali import DaliDecoder, cuda_device_count, gpu_available  # noqa: E402
from octbatch.errors import OctbatchError  # noqa: E402
from octbatch.preprocess import Preprocessing, normalize_into  # noqa: E402

SPEC = Preprocessing(input_size=(128, 128), mean=(0.2,), std=(0.2,))
# Measured (docs/GPU.md): DALI's linear+antialias resize of the full decode vs the CPU decoder's
# DCT-scaled decode + INTER_AREA differ by ~1.0 grey level on average (max ~30) on synthetic and real
# scans; the CPU decoder itself is 1.4 from a full-resolution Pillow decode. Tolerances leave ~2x room.
MEAN_DIFF_TOL = 2.0
P999_DIFF_TOL = 32.0
TOP1_TOL = 0.97


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def undefined_huffman_jpeg(seed: int = 11) -> bytes:
    """A JPEG whose header parses but whose scan uses an undefined Huffman table: DALI fails the batch."""
    data = bytearray(jpeg_bytes(scan(seed)))
    sos = data.find(b"\xff\xda")
    assert data[sos + 4] == 1  # one component (grayscale)
    data[sos + 6] = 0x33  # DC/AC table 3: never defined
    return bytes(data)


def twelve_bit_jpeg(seed: int = 12) -> bytes:
    """A JPEG whose SOF claims 12-bit samples: the header parses, DALI (8-bit) fails the batch."""
    data = bytearray(jpeg_bytes(scan(seed)))
    sof = data.find(b"\xff\xc0")
    data[sof + 4] = 12
    return bytes(data)


DALI_FAILS = {
    "bad/undefined-huffman.jpeg": ("error", "Huffman table"),
    "bad/twelve-bit.jpeg": ("error", "precision 12"),
}


@pytest.fixture
def bad_archive(tmp_path):
    root = tmp_path / "archive"
    expected = make_bad_archive(root, good=40)
    (root / "bad/undefined-huffman.jpeg").write_bytes(undefined_huffman_jpeg())
    (root / "bad/twelve-bit.jpeg").write_bytes(twelve_bit_jpeg())
    expected.update(DALI_FAILS)
    return root, expected


def _rows(out):
    return {r["path"]: r for r in pq.read_table(out).to_pylist()}


def test_run_with_dali_isolates_bad_files_and_keeps_the_good_ones(bad_archive, tmp_path, tiny_model):
    root, expected = bad_archive
    out = tmp_path / "dali.parquet"
    # One batch holds every file, so the good scans share a batch with files that make DALI raise.
    res = invoke(
        "run", root, "--out", out, "--model", tiny_model, "--decoder", "dali", "--batch-size", 64, "--json", "-q"
    )
    assert res.exit_code == 3, res.output
    summary = json.loads(res.stdout)
    rows = _rows(out)
    assert len(rows) == summary["discovered"] == 40 + len(expected)
    assert_awkward_rows(rows, expected)
    good = [r for p, r in rows.items() if not p.startswith(("bad/", "odd/"))]
    assert len(good) == 40
    for r in good:
        assert r["status"] == "ok" and r["pred"] in CLASSES
        assert abs(sum(r[f"p_{c}"] for c in CLASSES) - 1) < 1e-4
        assert (r["width"], r["height"]) in ((512, 496), (768, 496))
    for name in ("odd/cmyk.jpeg", "odd/sixteen-bit.png", "odd/progressive.jpeg"):
        assert rows[name]["status"] == "ok" and rows[name]["width"] == 512


def test_dali_and_cpu_runs_agree_file_by_file(bad_archive, tmp_path, tiny_model):
    root, _ = bad_archive
    a, b = tmp_path / "cpu.parquet", tmp_path / "dali.parquet"
    assert invoke("run", root, "--out", a, "--model", tiny_model, "--decoder", "cpu", "-q").exit_code == 3
    assert invoke("run", root, "--out", b, "--model", tiny_model, "--decoder", "dali", "-q").exit_code == 3
    ra, rb = _rows(a), _rows(b)
    assert ra.keys() == rb.keys()
    for p in ra:
        assert (ra[p]["status"], ra[p]["error"]) == (rb[p]["status"], rb[p]["error"]), p
    ok = [p for p in ra if ra[p]["status"] == "ok"]
    agree = np.mean([ra[p]["pred"] == rb[p]["pred"] for p in ok])
    assert agree >= TOP1_TOL


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_failed_dali_batch_is_recovered_and_the_pipeline_reused(tmp_path):
    goods = [_write(tmp_path, f"g{i}.jpeg", jpeg_bytes(scan(20 + i))) for i in range(4)]
    huff = _write(tmp_path, "huff.jpeg", undefined_huffman_jpeg())
    twelve = _write(tmp_path, "twelve.jpeg", twelve_bit_jpeg())
    with DaliDecoder(SPEC, threads=2) as dec:
        clean = dec.decode_batch(goods)
        assert all(e is None for e in clean.errors) and dec.stats["failed_runs"] == 0
        b = dec.decode_batch([goods[0], huff, goods[1], twelve, goods[2], goods[3]])
        assert "Huffman table" in b.errors[1] and "precision 12" in b.errors[3]
        assert [b.errors[i] for i in (0, 2, 4, 5)] == [None] * 4
        # The good files went through DALI again after the failure: same pixels as the clean batch.
        np.testing.assert_array_equal(b.images[[0, 2, 4, 5]], clean.images)
        assert b.sizes[0] == (512, 496) and b.sizes[1] is None
        assert dec.stats["failed_runs"] == 1 and dec.stats["recovered_files"] == 4
        again = dec.decode_batch(goods)
        np.testing.assert_array_equal(again.images, clean.images)
        assert dec.stats["builds"] == 1 and dec.stats["rebuilds"] == 0  # reused, never rebuilt


def test_a_batch_of_only_bad_files_gives_only_error_rows(tmp_path):
    paths = [
        _write(tmp_path, "h.jpeg", undefined_huffman_jpeg()),
        _write(tmp_path, "e.jpeg", b""),
        str(tmp_path / "missing.jpeg"),
    ]
    with DaliDecoder(SPEC, threads=1) as dec:
        b = dec.decode_batch(paths)
    assert "Huffman" in b.errors[0] and "empty file" in b.errors[1] and "not found" in b.errors[2]


def test_truncated_jpeg_gets_the_cpu_decoders_error(tmp_path):
    whole = jpeg_bytes(scan(30))
    path = _write(tmp_path, "t.jpeg", whole[: len(whole) // 2])
    with DaliDecoder(SPEC, threads=1) as dali, CpuDecoder(SPEC, threads=1) as cpu:
        a, b = cpu.decode_batch([path]), dali.decode_batch([path])
    assert "truncated" in b.errors[0] and a.errors == b.errors


def test_dali_cpu_parity_with_the_cpu_decoder_on_synthetic_scans(tmp_path):
    from octbatch.synth import make_archive

    make_archive(tmp_path, 48, broken=False)
    paths = sorted(str(p) for p in tmp_path.rglob("*.jpeg"))
    with DaliDecoder(SPEC, threads=2) as dali, CpuDecoder(SPEC, threads=2) as cpu:
        a, b = cpu.decode_batch(paths), dali.decode_batch(paths)
    assert a.sizes == b.sizes
    d = np.abs(a.images.astype(int) - b.images.astype(int))
    assert d.mean() <= MEAN_DIFF_TOL and np.percentile(d, 99.9) <= P999_DIFF_TOL
    # And the difference is not nothing: this compares two real, different resamplers.
    assert d.max() > 0


def test_verify_preproc_reports_parity(tmp_path, tiny_model):
    from octbatch.synth import make_archive

    make_archive(tmp_path / "a", 40)
    res = invoke("verify-preproc", tmp_path / "a", "--model", tiny_model, "--limit", 30, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["files"] == 30 and r["compared"] == 30 and r["dali_device"] in ("cpu", "gpu")
    assert r["pixel_mean_diff"] <= MEAN_DIFF_TOL and r["pixel_p999_diff"] <= P999_DIFF_TOL
    assert r["top1_agreement"] >= TOP1_TOL
    text = invoke("verify-preproc", tmp_path / "a", "--model", tiny_model, "--limit", 30).output
    assert "top-1 agreement" in text and "pixel difference" in text


@pytest.mark.data
def test_verify_preproc_on_real_scans(tiny_model):
    res = invoke("verify-preproc", DATA_DIR, "--model", tiny_model, "--limit", 256, "--json")
    r = json.loads(res.stdout)
    assert r["compared"] == 256 and r["status_mismatches"] == 0
    assert r["pixel_mean_diff"] <= MEAN_DIFF_TOL and r["pixel_p999_diff"] <= P999_DIFF_TOL
    assert r["top1_agreement"] >= TOP1_TOL


def test_worker_device_path_matches_the_host_path(bad_archive, tmp_path, tiny_model, monkeypatch):
    """The worker's GPU branch (DALI output -> infer_device by pointer, CPU-decoded rows -> infer),
    run on the CPU twin: every row must equal the host path's row."""
    import octbatch.backends as backends
    import octbatch.worker as worker

    root, _ = bad_archive
    host = tmp_path / "host.parquet"
    assert invoke("run", root, "--out", host, "--model", tiny_model, "--decoder", "dali", "-b", 16, "-q").exit_code == 3

    made = []
    real_make_runner = backends.make_runner

    def fake_make_runner(backend, model, **kw):
        made.append(
            HostPointerRunner(real_make_runner("onnxruntime", model, threads=kw.get("threads", 0)), model.preprocessing)
        )
        return made[-1]

    monkeypatch.setattr(backends, "make_runner", fake_make_runner)
    monkeypatch.setattr(worker, "use_device_path", lambda decoder, device, backend: decoder == "dali")
    dev = tmp_path / "device.parquet"
    assert invoke("run", root, "--out", dev, "--model", tiny_model, "--decoder", "dali", "-b", 16, "-q").exit_code == 3
    assert made and made[0].device_calls >= 3 and made[0].host_calls >= 1  # both branches ran
    rh, rd = _rows(host), _rows(dev)
    assert rh.keys() == rd.keys()
    for p in rh:
        assert (rh[p]["status"], rh[p]["error"], rh[p]["pred"]) == (rd[p]["status"], rd[p]["error"], rd[p]["pred"]), p
        if rh[p]["status"] == "ok":
            assert abs(rh[p]["p_CNV"] - rd[p]["p_CNV"]) < 1e-5


def test_device_batch_holds_its_buffer_until_released(tmp_path):
    paths = [_write(tmp_path, f"s{i}.jpeg", jpeg_bytes(scan(40 + i))) for i in range(3)]
    with DaliDecoder(SPEC, threads=1) as dec:
        ref = dec.decode_batch(paths)
        b1 = dec.decode_batch_device(paths)
        b2 = dec.decode_batch_device(paths[:2])  # the other pipeline: b1 stays valid meanwhile
        x = np.ctypeslib.as_array(ctypes.cast(b1.ptr, ctypes.POINTER(ctypes.c_float)), shape=(3, 1, 128, 128))
        np.testing.assert_allclose(
            x, normalize_into(np.empty((3, 1, 128, 128), np.float32), ref.images, SPEC), atol=1e-5
        )
        assert b1.device_rows == [0, 1, 2] and b2.device_rows == [0, 1]
        b1.release()
        b2.release()
        b3 = dec.decode_batch_device(paths[:1])
        assert b3.ptr is not None
        b3.release()


def test_a_ragged_dali_output_goes_to_the_cpu_instead_of_failing_the_batch(tmp_path, monkeypatch):
    """DALI 2.x hands back a TensorList that is dense only when every sample has one shape; a ragged
    one cannot be as_tensor()'d, so its rows are decoded on the CPU (checked with is_dense_tensor())."""
    paths = [_write(tmp_path, f"r{i}.jpeg", jpeg_bytes(scan(60 + i))) for i in range(3)]

    class Ragged:
        def is_dense_tensor(self):
            return False

        def as_tensor(self):
            raise RuntimeError("ragged batch")

    with CpuDecoder(SPEC, threads=1) as cpu, DaliDecoder(SPEC, threads=1) as dec:
        want = cpu.decode_batch(paths)
        monkeypatch.setattr(dec, "_run", lambda slot, output, items: Ragged())
        b = dec.decode_batch_device(paths)
        assert b.ptr is None and b.device_rows == [] and b.host_rows == [0, 1, 2] and b.ok.all()
        np.testing.assert_array_equal(b.host_images, want.images)
        b.release()
        h = dec.decode_batch(paths)
        assert h.ok.all() and np.array_equal(h.images, want.images) and dec.stats["not_dense"] == 2


def test_gpu_decoder_without_a_gpu_says_how_to_fix_it():
    if cuda_device_count() > 0:
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(OctbatchError, match="needs a CUDA GPU"):
        DaliDecoder(SPEC, device="gpu")
    assert gpu_available() is False


@pytest.mark.gpu
def test_mixed_decoder_matches_the_cpu_decoder(tmp_path):
    if not gpu_available():
        pytest.skip("no CUDA GPU visible (or DALI cannot use it): the mixed decoder needs one")
    from octbatch.synth import make_archive

    make_archive(tmp_path, 64, broken=True)
    paths = sorted(str(p) for p in tmp_path.rglob("*.jpeg"))
    with DaliDecoder(SPEC, threads=2, device="gpu") as gpu, CpuDecoder(SPEC, threads=2) as cpu:
        a, b = cpu.decode_batch(paths), gpu.decode_batch(paths)
        dev = gpu.decode_batch_device(paths)
        assert dev.ptr is not None and len(dev.device_rows) == 64
        dev.release()
    assert a.errors == b.errors
    ok = a.ok
    d = np.abs(a.images[ok].astype(int) - b.images[ok].astype(int))
    assert d.mean() <= MEAN_DIFF_TOL and np.percentile(d, 99.9) <= P999_DIFF_TOL
