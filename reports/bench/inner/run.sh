#!/usr/bin/env bash
# Which inner objective the recipes' fine-tunes should maximise (issue 39 item 1), as a resumable
# campaign: one slice per recipe x objective (fine-tune BiRQA, then quick PGD mos-split on 48 val
# items at eps 2 and 4), two processes of one thread each. A slice whose JSON exists is skipped.
# Merge: python scripts/inner_objective.py --merge reports/bench/inner/*.json --out reports/bench/inner-objective
#   bash reports/bench/inner/run.sh            # from the repository root (or a worktree of it)
set -u
cd "$(dirname "$0")/../../.."
OUT=reports/bench/inner
PY=${PYTHON:-python}
slice() {  # recipe inner
  local f="$OUT/$1-$2.json"
  [ -s "$f" ] && { echo "skip $f"; return 0; }
  OMP_NUM_THREADS=1 $PY scripts/inner_objective.py --recipe "$1" --inner "$2" --n 48 --eps 2,4 \
      --homes "${HOMES:-/tmp/robench-inner}" --json "$f" > /dev/null 2> "$OUT/$1-$2.log"
}
( slice aat loss; slice aat up; slice r mos-split; slice at loss; slice at up ) &
( slice aat mos-split; slice r loss; slice r up; slice at mos-split ) &
wait
