"""benchmarks/gpu_check.py cannot report a speed for rows it did not decode (run here on the CPU:
the DALI check on DALI's CPU twin, TensorRT and torch-CUDA absent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _run(*args, timeout=240):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def test_archive_and_out_are_required(tmp_path):
    p = _run("--out", str(tmp_path))
    assert p.returncode == 2 and "--archive" in p.stderr


@pytest.mark.slow
def test_good_scans_are_counted_and_reported(tmp_path):
    from octbatch.synth import make_archive

    make_archive(tmp_path / "scans", 12, broken=False, widths=(512,))
    p = _run("--archive", str(tmp_path / "scans"), "--out", str(tmp_path / "out"), "--files", "24", "--dali-device", "cpu", "--budget-s", "200")
    r = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert p.returncode == 0, p.stderr[-2000:]
    c = r["checks"]
    assert c["cpu_decode"]["status"] == "ok" and c["cpu_decode"]["decoded"] == c["cpu_decode"]["files"] == 24
    assert c["tensorrt"]["status"] == "absent" and r["failed"] == []
    assert c["end_to_end"]["runs"]["cpu_default"]["ok"] == 24
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| cpu_decode | ok | 24 / 24 |" in md


@pytest.mark.slow
def test_a_stage_with_no_good_rows_fails_loudly(tmp_path):
    bad = tmp_path / "scans" / "NORMAL"
    bad.mkdir(parents=True)
    for i in range(3):
        (bad / f"x{i}.jpeg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)  # JPEG magic, garbage after
    p = _run("--archive", str(tmp_path / "scans"), "--out", str(tmp_path / "out"), "--files", "6", "--dali-device", "cpu", "--budget-s", "120")
    assert p.returncode == 1 and "FAILED: cpu_decode" in p.stderr
    r = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert r["checks"]["cpu_decode"]["status"] == "failed" and "0 of 6 scans decoded" in r["checks"]["cpu_decode"]["error"]
    assert "img_per_s" not in r["checks"]["cpu_decode"]
    assert r["checks"]["end_to_end"]["status"] == "failed"
    assert "| cpu_decode | failed |" in (tmp_path / "out" / "gpu_check.md").read_text()
