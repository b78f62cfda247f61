#!/usr/bin/env bash
# The reference store's fine-tunes: BiRQA and LPIPS-Alex × R-, AT-, AAT- at the quick profile
# (inner PGD maximising each recipe's own loss; cap and held-out rule in robench/core/profiles.py),
# from the shipped clean weights, into $ROBENCH_HOME; then each run's training curve as a PNG in
# reports/reference/training/. Resumable (a finished recipe is skipped, a stopped one resumes
# from its last checkpoint). Run it from a worktree at a fixed commit, one process:
#   git worktree add /work/train HEAD && cd /work/train && ROBENCH_HOME=/work/trainhome bash reports/reference/train.sh
# then ship the weights from the main checkout: python scripts/ship_weights.py birqa.r birqa.at …
set -euo pipefail
cd "$(dirname "$0")/../.."
RB=${ROBENCH:-robench}
PY=${PYTHON:-python}
OUT=reports/reference/training
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for m in ${MODELS:-birqa lpips.alex}; do
  for d in ${RECIPES:-at aat r}; do
    f="$OUT/$m.$d.json"
    [ -s "$f" ] && { echo "skip $f"; continue; }
    $RB train --model "$m" --defense "$d" --json > "$f.tmp" && mv "$f.tmp" "$f"
    $PY - "$f" "$OUT/$m.$d" <<'PY'
import json, sys
from pathlib import Path
from robench.results.plots import plot_training
run = Path(json.loads(Path(sys.argv[1]).read_text())["out"])
print(plot_training(run, sys.argv[2]))
PY
  done
done
