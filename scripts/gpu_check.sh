#!/usr/bin/env bash
# Issue 18.7: the GPU checks, as one prepared script for a lent GPU machine (the `device` tool of
# /work/.library: about 15 minutes of device time in all, every start and command counted, so run
# this once with a timeout that leaves time to rerun it, e.g. `run` with
# command="bash scripts/gpu_check.sh" and timeout_s=560).
#
# Steps, each under its own time limit, all under BUDGET seconds (default 480, well under the
# device tool's 10 minutes a command); a step that fails or runs out of time is recorded and the
# next one runs:
#   1. the machine: nvidia-smi, python, torch, CUDA                         -> machine.txt
#   2. pytest -m gpu (tests/test_gpu.py: every target's forward/backward on CUDA vs the CPU, PGD
#      cells on cuda vs CPU, a Ray GPU cell if Ray is installed, CPU-vs-cuda score agreement)
#                                                                           -> pytest-gpu.log
#   3. robench bench speed at 512x384, birqa, lpips.alex, topiq.fr, batch 1 and batch 16
#                                                                           -> bench-speed-b1.json, bench-speed-b16.json
#   4. robench bench attack: one PGD step of BiRQA at 512x384, batch 16      -> bench-attack.json
#   5. one paper-profile cell: BiRQA (random weights: the weights do not change the cost) × PGD
#      (the paper profile's 100 steps and the convergence re-run at half budget), ε = 8/255, 16
#      items of the built-in set at the paper's 512 px (built first, on the CPU, one crop per
#      photo: half the build of the default two, the same cost per item)    -> paper-cell.json
# plus summary.txt (each step's exit status and seconds) and steps.log (every step's stderr).
# Eight files: the most the device tool brings back from $OUT.
#
# Set-up: none where python3 has torch with CUDA and robench's dependencies (the lent H200's
# image has them, except Ray, pyautoattack, torchattacks and ART, which these steps do not
# need); robench runs from this checkout (PYTHONPATH, `python3 -m robench.cli`), nothing is
# installed. Wheels in .whl/ (see /work/.library/device/README.md) are installed first if present.
#
# A dry run on a CPU machine checks the plumbing (the tests skip there):
#   OUT=/tmp/gpucheck DEVICE=cpu SIZE=64x48 N=2 RUN_EXTRA="--attack-option pgd.steps=2" bash scripts/gpu_check.sh
#
# Output: $OUT when set (the device tool), else reports/gpu/. Commit the figures under
# reports/gpu/ with the machine recorded (machine.txt, and every JSON's "machine"/"device").
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${OUT:-reports/gpu}
mkdir -p "$DEST"
BUDGET=${BUDGET:-480}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-512x384}
N=${N:-16}
# shellcheck disable=SC2206  # RUN_EXTRA: extra words for the paper cell (a dry run's short budget)
RUN_EXTRA=(${RUN_EXTRA:-})
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export ROBENCH_HOME=${ROBENCH_HOME:-/tmp/robench-gpu-home}
mkdir -p "$ROBENCH_HOME"
T0=$(date +%s)
SUMMARY="$DEST/summary.txt"
LOG="$DEST/steps.log"
: > "$SUMMARY"
: > "$LOG"

if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
RB=("$PY" -m robench.cli)

# step NAME LIMIT_S OUTFILE CMD...: run CMD with stdout to OUTFILE (stderr to steps.log) under
# min(LIMIT_S, what is left of BUDGET)
step() {
  local name=$1 limit=$2 out=$3 left rc t
  shift 3
  left=$(( BUDGET - ($(date +%s) - T0) ))
  (( limit > left )) && limit=$left
  if (( limit < 15 )); then
    echo "$name: skipped (budget of ${BUDGET}s spent)" | tee -a "$SUMMARY"
    return
  fi
  echo "== $name (at most ${limit}s)" | tee -a "$LOG"
  t=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$out" 2>> "$LOG"
  rc=$?
  t=$(( $(date +%s) - t ))
  case $rc in
    0) echo "$name: ok (${t}s)" ;;
    124|137) echo "$name: TIMED OUT after ${t}s (limit ${limit}s)" ;;
    *) echo "$name: FAILED rc=$rc (${t}s)" ;;
  esac | tee -a "$SUMMARY"
}

machine() {
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -a)"
  echo "cpus: $(nproc --all)"
  nvidia-smi || echo "nvidia-smi: not available"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  "$PY" - <<'EOF'
import platform, sys
import torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", "sm", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count)
for m in ("numpy", "scipy", "pandas", "skimage", "sklearn", "typer", "rich", "safetensors", "PIL", "pytest", "ray",
          "torchattacks", "pyautoattack", "art"):
    try:
        mod = __import__(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001
        print(m, "MISSING", type(exc).__name__)
import robench
print("robench", robench.__version__)
EOF
}

export -f machine
export PY
step machine 60 "$DEST/machine.txt" bash -c machine
# the tests' own per-test limit (pyproject: 600 s) is too long here: 240 s each
step pytest-gpu 200 "$DEST/pytest-gpu.log" \
  "$PY" -m pytest tests/test_gpu.py -m gpu -v -rs -p no:cacheprovider --timeout 240 --durations=15
for b in 1 16; do
  step "bench-speed-b$b" 60 "$DEST/bench-speed-b$b.json" \
    "${RB[@]}" bench speed --models birqa,lpips.alex,topiq.fr --size "$SIZE" --batch "$b" --rounds 10 \
    --reference topiq.fr --device "$DEVICE" --json
done
step bench-attack 60 "$DEST/bench-attack.json" \
  "${RB[@]}" bench attack --model birqa --size "$SIZE" --batch 16 --device "$DEVICE" --json
step paper-cell 300 "$DEST/paper-cell.json" \
  "${RB[@]}" run --profile paper --model birqa --weights none --attacks pgd --eps 8 --n "$N" --device "$DEVICE" \
  --dataset-option crops_per_source=1 --store "$ROBENCH_HOME/paper.sqlite" "${RUN_EXTRA[@]}" --json
echo "total: $(( $(date +%s) - T0 ))s of a ${BUDGET}s budget" | tee -a "$SUMMARY"
ls -l "$DEST"
