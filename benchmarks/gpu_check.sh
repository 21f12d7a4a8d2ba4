#!/usr/bin/env bash
# One prepared GPU check for a bare GPU machine (torch + CUDA, maybe CuPy and ONNX Runtime, but no
# octbatch, no simplejpeg, no network): everything it lacks travels as ONE folder under 60 MiB.
#
#   benchmarks/gpu_check.sh bundle BUNDLE_DIR [SCANS_DIR]   # here, with the package index reachable
#   benchmarks/gpu_check.sh run    BUNDLE_DIR OUT_DIR       # there: one command, writes
#                                                            #   OUT_DIR/gpu_check.json and gpu_check.md
#
# bundle: octbatch's source (git archive of HEAD: octbatch/, benchmarks/, tests/helpers/modelgen.py), ~30 MB
# of real scans copied from SCANS_DIR (default ../shared/data/oct2017) using only files whose
# manifest split_hint is train or unknown (report-only splits never leave), spread over the class
# folders, and the simplejpeg wheel for CPython 3.12 manylinux x86_64 (PYTHON_TAG/PLATFORM change it).
# run: installs that wheel into BUNDLE_DIR/site when simplejpeg does not import, then runs
# benchmarks/gpu_check.py (FILES scans, default 4096; overall budget BUDGET_S, default 540 s) and
# exits with its status.
# On a GPU server that has octbatch installed, run gpu_check.py directly instead.
set -euo pipefail

usage() { sed -n '2,17p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
mode=$1
bundle=$2
here=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
LIMIT_MIB=60

bundle_cmd() {
  local scans=${1:-$here/../shared/data/oct2017}
  [ -f "$scans/manifest.csv" ] || { echo "gpu_check.sh: $scans/manifest.csv not found (give SCANS_DIR)" >&2; exit 1; }
  rm -rf "$bundle"
  mkdir -p "$bundle/src" "$bundle/scans" "$bundle/wheels"
  git -C "$here" archive HEAD octbatch benchmarks tests/helpers/__init__.py tests/helpers/modelgen.py | tar -x -C "$bundle/src"
  "$PYTHON" - "$scans" "$bundle/scans" "${SCANS_MB:-30}" <<'EOF'
import csv, shutil, sys
from pathlib import Path
src, dst, budget = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]) * 1e6
rows = [r for r in csv.DictReader(open(src / "manifest.csv")) if r["split_hint"] in ("train", "unknown")]
by_class = {}
for r in sorted(rows, key=lambda r: r["path"]):
    by_class.setdefault(r["label"], []).append(r)
picked, total, i = [], 0, 0
while total < budget and any(i < len(v) for v in by_class.values()):
    for v in by_class.values():
        if i < len(v) and total + int(v[i]["bytes"]) <= budget:
            picked.append(v[i]["path"]); total += int(v[i]["bytes"])
    i += 1
for p in picked:
    (dst / p).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / p, dst / p)
print(f"gpu_check.sh: {len(picked)} scans, {total / 1e6:.1f} MB (split_hint train/unknown only)")
EOF
  "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "${PYTHON_TAG:-3.12}" --platform "${PLATFORM:-manylinux2014_x86_64}" -d "$bundle/wheels" simplejpeg
  local mib
  mib=$(du -sm "$bundle" | cut -f1)
  if [ "$mib" -ge "$LIMIT_MIB" ]; then
    echo "gpu_check.sh: bundle is ${mib} MiB, over ${LIMIT_MIB} MiB: lower SCANS_MB" >&2
    exit 1
  fi
  echo "gpu_check.sh: bundle $bundle is ${mib} MiB; on the GPU machine: benchmarks/gpu_check.sh run BUNDLE_DIR OUT_DIR"
}

run_cmd() {
  local out=${1:?OUT_DIR}
  [ -f "$bundle/src/benchmarks/gpu_check.py" ] || { echo "gpu_check.sh: $bundle is not a bundle (make one with: gpu_check.sh bundle DIR)" >&2; exit 1; }
  mkdir -p "$out"
  export PYTHONPATH="$bundle/site:$bundle/src${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PYTHON" -c "import simplejpeg" 2>/dev/null; then
    "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --no-index --target "$bundle/site" "$bundle"/wheels/simplejpeg-*.whl \
      || echo "gpu_check.sh: could not install the bundled simplejpeg wheel; the CPU-decoder stages will fail and say so" >&2
  fi
  "$PYTHON" "$bundle/src/benchmarks/gpu_check.py" --archive "$bundle/scans" --out "$out" --files "${FILES:-4096}" --budget-s "${BUDGET_S:-540}"
}

case $mode in
  bundle) shift 2; bundle_cmd "$@" ;;
  run) shift 2; run_cmd "$@" ;;
  *) usage ;;
esac
