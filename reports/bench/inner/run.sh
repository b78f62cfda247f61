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
slice() {  # recipe inner [field=value ...]: profile overrides of the fine-tune (AAT's deviations)
  local r=$1 i=$2; shift 2
  local name="$r-$i" sets=() kv
  for kv in "$@"; do name="$name-$kv"; sets+=(--set "$kv"); done
  [ "$r" = none ] && name=none
  local f="$OUT/$name.json"
  [ -s "$f" ] && { echo "skip $f"; return 0; }
  OMP_NUM_THREADS=1 $PY scripts/inner_objective.py --recipe "$r" --inner "$i" "${sets[@]}" --n 48 --eps 2,4 \
      --homes "${HOMES:-/tmp/robench-inner}" --json "$f" > /dev/null 2> "$OUT/$name.log"
}
# the inner-objective comparison, then AAT's two deviations from the paper (band width, hinge
# normaliser); `none`: the undefended model on the same items
( slice aat loss; slice aat up; slice r mos-split; slice at loss; slice at up; slice aat loss aat_band_fraction=1.0 ) &
( slice aat mos-split; slice r loss; slice r up; slice at mos-split; slice aat loss aat_hinge_norm=mos-range; slice none - ) &
wait
