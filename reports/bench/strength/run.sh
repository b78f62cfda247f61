#!/usr/bin/env bash
# The attack-strength table of issue 38, as a resumable campaign: one slice per target x direction
# (each `robench bench attack-strength --json`, eps 2,4,8, 32 quick test items), two processes of
# one thread each. A slice whose JSON exists is skipped; a slice is written to a temporary file and
# renamed, so a crash leaves no half file. Merge: python scripts/strength_table.py
# reports/bench/strength/*.json --out reports/bench/attack-strength
#   bash reports/bench/strength/run.sh            # from the repository root (or a worktree of it)
set -u
cd "$(dirname "$0")/../../.."
OUT=reports/bench/strength
PY=${PYTHON:-python}
ATTACKS=pgd,autoattack,cw,zhang,facpa,uap,fgsm
slice() {  # model direction
  local f="$OUT/$1-$2.json"
  [ -s "$f" ] && { echo "skip $f"; return 0; }
  OMP_NUM_THREADS=1 $PY -m robench.cli bench attack-strength --model "$1" --direction "$2" --eps 2,4,8 --n 32 \
      --attacks "$ATTACKS" --json > "$f.tmp" 2> "$OUT/$1-$2.log" && mv "$f.tmp" "$f"
}
( slice birqa down; slice ssim up; slice ssim down; slice birqa mos-split ) &
( slice birqa up; slice lpips.alex up; slice lpips.alex down; slice ssim mos-split ) &
wait
