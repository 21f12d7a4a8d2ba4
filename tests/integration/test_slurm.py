"""deploy/slurm on a real (single-node, loopback) Slurm cluster: array job + dependent merge.

Starts slurmctld and slurmd with deploy/slurm/ci-cluster.sh, submits with deploy/slurm/submit.sh
exactly as a user would, and compares the merged table with a plain `octbatch run`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers.modelgen import tiny_classifier

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SLURM = ROOT / "deploy" / "slurm"
OCTBATCH = Path(sys.executable).parent / "octbatch"
WAIT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip_reason() -> str | None:
    missing = [c for c in ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol") if shutil.which(c) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing): apt-get install -y slurm-wlm"
    if os.geteuid() != 0:
        return "the throwaway Slurm cluster needs root (slurmd launches jobs as their user)"
    if not OCTBATCH.exists():
        return f"no octbatch executable beside {sys.executable}"
    return None


@pytest.fixture
def slurm_cluster(tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    state = tmp_path / "slurm"
    env = {**os.environ, "SLURM_CI_CTLD_PORT": str(_free_port()), "SLURM_CI_SLURMD_PORT": str(_free_port())}
    env.pop("SLURM_JOB_ID", None)  # in case the tests themselves run inside a Slurm job
    try:
        started = subprocess.run(
            [str(SLURM / "ci-cluster.sh"), "start", str(state)], env=env, capture_output=True, text=True, timeout=60
        )
        assert started.returncode == 0, f"the test cluster did not start:\n{started.stdout}\n{started.stderr}"
        env["SLURM_CONF"] = str(state / "slurm.conf")
        yield env
    finally:
        # Always: cancel our jobs and stop both daemons, even when the test failed half-way.
        subprocess.run([str(SLURM / "ci-cluster.sh"), "stop", str(state)], env=env, capture_output=True, timeout=60)


def _job_state(job_id: str, env) -> tuple[str, str]:
    """(JobState, ExitCode) of a job, or of the worst task of an array job."""
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True, check=True
    ).stdout
    states = re.findall(r"JobState=(\S+)", out)
    codes = re.findall(r" ExitCode=(\S+)", out)
    bad = [(s, c) for s, c in zip(states, codes) if s != "COMPLETED"]
    return bad[0] if bad else (states[0], codes[0])


def _wait(job_ids, env, logs: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        queued = subprocess.run(
            ["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"], env=env, capture_output=True, text=True
        ).stdout
        if not queued.strip():
            return
        time.sleep(0.5)
    dump = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(logs.glob("*.out")))
    pytest.fail(f"the Slurm jobs did not finish in {WAIT_S} s; still queued:\n{queued}\n{dump}")


def _compare(expected: Path, got: Path) -> None:
    a = pq.read_table(expected).sort_by("path")
    b = pq.read_table(got).sort_by("path")
    assert b.column("path").to_pylist() == a.column("path").to_pylist()
    prob_cols = [c for c in a.column_names if c.startswith("p_")]
    assert prob_cols, a.column_names
    for col in ["pred", "status", *prob_cols]:
        assert b.column(col).equals(a.column(col)), col


def test_array_job_and_dependent_merge_equal_a_plain_run(slurm_cluster, tmp_path):
    from octbatch.synth import make_archive

    env = slurm_cluster
    archive = tmp_path / "archive"
    info = make_archive(archive, 200)
    model = tiny_classifier(tmp_path / "tiny.onnx", size=32)
    results = tmp_path / "results"
    results.mkdir()

    plain = tmp_path / "plain.parquet"
    ran = subprocess.run(
        [str(OCTBATCH), "run", str(archive), "--out", str(plain), "--model", model, "-q"],
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 3, ran.stderr  # the synthetic archive has 3 broken files

    # No GPU here: --gpus-per-task 0 is the documented switch for CPU-only partitions.
    # PATH deliberately lacks the venv: the jobs must use the octbatch that submit.sh resolved.
    sub_env = {**env, "PATH": f"{OCTBATCH.parent}:/usr/bin:/bin:/usr/sbin:/sbin"}
    submitted = subprocess.run(
        [
            str(SLURM / "submit.sh"),
            "--tasks",
            "4",
            "--gpus-per-task",
            "0",
            "--cpus-per-task",
            "1",
            "--time",
            "00:05:00",
            "--model",
            model,
            str(archive),
            str(results / "oct.parquet"),
        ],
        env=sub_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert submitted.returncode == 0, submitted.stderr
    array_id, merge_id = submitted.stdout.split()
    dep = subprocess.run(["scontrol", "-o", "show", "job", merge_id], env=env, capture_output=True, text=True).stdout
    assert f"afterany:{array_id}" in dep, dep

    logs = results / "logs"
    _wait([array_id, merge_id], env, logs)
    array_state = _job_state(array_id, env)
    merge_state = _job_state(merge_id, env)
    dump = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(logs.glob("*.out")))
    # Slices with a broken file exit 3 in octbatch; the job script counts that as success.
    assert array_state == ("COMPLETED", "0:0"), dump
    assert merge_state == ("COMPLETED", "0:0"), dump

    task_logs = sorted(logs.glob("*_[0-9].out"))
    assert len(task_logs) == 4, dump
    assert all("octbatch slice" in p.read_text() for p in task_logs)
    assert any("counted as success" in p.read_text() for p in task_logs)
    assert "merged 203 row(s)" in next(logs.glob("*merge*.out")).read_text()

    assert pq.read_table(results / "oct.parquet").num_rows == info["scans"] + info["broken"]
    _compare(plain, results / "oct.parquet")


def test_submit_refuses_a_missing_archive_without_submitting(tmp_path):
    # Runs without Slurm: the wrapper checks its arguments before calling sbatch.
    done = subprocess.run(
        [str(SLURM / "submit.sh"), str(tmp_path / "nope"), str(tmp_path / "out.parquet")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "is not a folder" in done.stderr


@pytest.mark.ray
def test_ray_on_slurm_job_runs_octbatch_on_the_ray_cluster_it_starts(slurm_cluster, tmp_path):
    import importlib.util

    if importlib.util.find_spec("ray") is None or not (OCTBATCH.parent / "ray").exists():
        pytest.skip("ray is not installed: pip install 'octbatch[cluster]'")
    from octbatch.synth import make_archive

    env = slurm_cluster
    archive = tmp_path / "archive"
    make_archive(archive, 60)
    model = tiny_classifier(tmp_path / "tiny.onnx", size=32)
    plain = tmp_path / "plain.parquet"
    subprocess.run([str(OCTBATCH), "run", str(archive), "--out", str(plain), "--model", model, "-q"], check=False)
    out = tmp_path / "ray.parquet"
    log = tmp_path / "ray-job.out"
    # One node only here, so the head alone forms the cluster; on loopback, on a port outside
    # Ray's worker port range. The script's GPU request is lifted with --gres=none.
    exports = (
        f"ALL,OCTBATCH_ARCHIVE={archive},OCTBATCH_OUT={out},OCTBATCH_MODEL={model},OCTBATCH_BIN={OCTBATCH},"
        f"RAY_HEAD_IP=127.0.0.1,RAY_PORT={_free_port()}"
    )
    job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=1",
            f"--cpus-per-task={min(2, os.cpu_count() or 1)}",
            "--gres=none",
            "--time=00:05:00",
            f"--output={log}",
            f"--export={exports}",
            str(SLURM / "octbatch-ray.sbatch"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip().split(";")[0]
    _wait([job_id], env, tmp_path)
    text = log.read_text() if log.exists() else "(no log)"
    assert _job_state(job_id, env) == ("COMPLETED", "0:0"), text
    assert '"executor": "ray"' in text, text
    _compare(plain, out)
