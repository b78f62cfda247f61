#!/usr/bin/env bash
# Both protocols on the quick profile: BiRQA base / R / AT / AAT (the scale-keeping AAT objective)
# under score inflation (up) and the ranking attack (mos-split), mini v2 test split, stored in
# reports/protocols/results.sqlite, then the report (reports/protocols/report/).
#   FGSM: ε ∈ {2, 4, 8}/255, both directions, N items (default 96).
#   PGD (80 steps, half-budget check): ε 8/255 under up and mos-split, N items (mos-split: the
#   protocol of the paper's SROCC column).
# PGD under both directions at every ε is the issue's full grid; on 2 CPU cores it costs ≈ 45 min a
# cell (96 items × 3 ε × 120 gradient steps), so it waits for the speed-up (PGD_EPS / PGD_DIRS
# select more: PGD_EPS=2,4,8 bash reports/protocols/run.sh).
# Trains what is missing (clean BiRQA, then each recipe) into $ROBENCH_HOME; rerunning skips stored
# cells. DEFENSES selects a part (two 1-thread processes: DEFENSES="none r" and DEFENSES="at aat").
set -euo pipefail
cd "$(dirname "$0")/../.."
STORE=reports/protocols/results.sqlite
N="${N:-96}"
for defense in ${DEFENSES:-none r at aat}; do
  robench run --model birqa --defense "$defense" --attacks fgsm --eps 2,4,8 --direction up,mos-split \
    --n "$N" --store "$STORE" --json > "reports/protocols/run-${defense}-fgsm.json"
  robench run --model birqa --defense "$defense" --attacks pgd --eps "${PGD_EPS:-8}" \
    --direction "${PGD_DIRS:-up,mos-split}" --n "$N" --store "$STORE" --json > "reports/protocols/run-${defense}-pgd.json"
done
if [ -z "${NO_REPORT:-}" ]; then
  robench report --store "$STORE" --out reports/protocols/report --no-pdf
fi
