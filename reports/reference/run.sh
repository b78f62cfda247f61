#!/usr/bin/env bash
# The reference store: the paper's headline grid on the quick profile (mini v2 test split, 128 px,
# N items, default 96), in reports/reference/results.sqlite, as a resumable campaign in slices.
# Each slice is one `robench run`; a stored cell is skipped, so rerunning resumes where it stopped.
# Slices run in the order the issue fills the grid when compute runs short:
#   1 BiRQA x base/R/AT/AAT x PGD, FGSM, ranking attack (mos-split) at eps 1, 2, 4 /255
#   2 the same with C&W and AutoAttack
#   3 LPIPS-Alex x base/R/AT/AAT, slices 1-2's attacks
#   4 score inflation (up) at eps 2, 4, 8 (IR-Score), both models, PGD and FGSM
#   5 the ranking attack at eps 8
#   6 FACPA (ranking attack, eps 1, 2, 4, 8)
#   7 Table 7/9 shape on mini-2afc: BiRQA base, AAT, base + flip / rotate, FGSM and PGD
#   8 the extensions: transfer matrix, UAP, certified intervals (base models; certificates of AAT too)
# Two processes, one thread each (PART=a and PART=b split each slice by defence); every slice's
# --json summary lands beside the store. Trains what is missing into $ROBENCH_HOME first (the
# recipes at the profile's settings). Run it from a worktree at a fixed commit:
#   git worktree add /work/reference HEAD && cd /work/reference
#   PART=a bash reports/reference/run.sh & PART=b bash reports/reference/run.sh & wait
# then copy reports/reference/results.sqlite (sqlite3 .backup) and the slice JSONs to the main
# checkout and commit them after each slice.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=reports/reference
STORE=$OUT/results.sqlite
N=${N:-96}
RB=${ROBENCH:-robench}
case "${PART:-all}" in
  a) DEFS="none r" ;;
  b) DEFS="at aat" ;;
  *) DEFS="none r at aat" ;;
esac
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
slice() {  # name model attacks eps direction [dataset]
  local name=$1 model=$2 attacks=$3 eps=$4 dir=$5 ds=${6:-mini}
  for d in $DEFS; do
    local f="$OUT/slice-$name-$model-$d.json"
    [ -s "$f" ] && { echo "skip $f"; continue; }
    $RB run --model "$model" --defense "$d" --attacks "$attacks" --eps "$eps" --direction "$dir" --dataset "$ds" \
      --n "$N" --store "$STORE" --json > "$f.tmp" && mv "$f.tmp" "$f"
  done
}
slice 1 birqa pgd,fgsm 1,2,4 mos-split
slice 2 birqa cw,autoattack 1,2,4 mos-split
slice 3a lpips.alex pgd,fgsm 1,2,4 mos-split
slice 3b lpips.alex cw,autoattack 1,2,4 mos-split
slice 4 birqa pgd,fgsm 2,4,8 up
slice 4 lpips.alex pgd,fgsm 2,4,8 up
slice 5 birqa pgd,fgsm,cw,autoattack 8 mos-split
slice 5 lpips.alex pgd,fgsm,cw,autoattack 8 mos-split
slice 6 birqa facpa 1,2,4,8 mos-split
slice 6 lpips.alex facpa 1,2,4,8 mos-split
if [ "${PART:-all}" != b ]; then  # 2AFC: base and its purification wrappers, one process
  DEFS="none flip rotate" slice 7 birqa fgsm,pgd 1,2,4,8 up mini-2afc
fi
if [ "${PART:-all}" != a ]; then
  DEFS="aat" slice 7 birqa fgsm,pgd 1,2,4,8 up mini-2afc
fi
# 8 the extensions on the same items (base models; certificates also for BiRQA-AAT): PGD at ε 8
#   under both protocols with the images kept, the transfer matrix between the four sources, UAP
#   beside FGSM, median-smoothing certified intervals with the L2 check attack. Costs measured at
#   32 items (reports/extensions, ×3 for 96): PGD ≈ 35 min, UAP ≈ 3 h, certificates ≈ 1 h 40 min.
SOURCES=${SOURCES:-birqa,lpips.alex,ssim,ms-ssim}
ext() {  # name command...
  local f="$OUT/ext-$1.json"; shift
  [ -s "$f" ] && { echo "skip $f"; return; }
  "$@" --store "$STORE" --json > "$f.tmp" && mv "$f.tmp" "$f"
}
if [ "${PART:-all}" != b ]; then  # ≈ 3 h 35 min
  ext pgd $RB run --model "$SOURCES" --attacks pgd --eps 8 --n "$N" --direction up,mos-split --keep-images
  ext transfer $RB transfer --source "$SOURCES" --to "$SOURCES"
  ext uap $RB run --model "$SOURCES" --attacks fgsm,uap --eps 8 --n "$N" --direction up,mos-split
fi
if [ "${PART:-all}" != a ]; then  # ≈ 1 h 40 min (BiRQA-AAT's certificates: not measured before)
  for m in ssim birqa; do ext "certify-$m" $RB certify --model "$m" --n "$N" --check-attack pgd; done
  ext certify-birqa-aat $RB certify --model birqa --defense aat --n "$N" --check-attack pgd
fi
