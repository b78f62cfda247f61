#!/usr/bin/env bash
# The paper's comparison (Table 3 shape) on the quick profile: base / R / AT / AAT × {birqa,
# lpips.alex, topiq.fr} × all seven attacks at ε = 8/255, stored in reports/quick/results.sqlite,
# then the reporter's tables and plots (reports/quick/report/) and the baseline `robench check`
# compares against (reports/baseline.json).
# 96 items per cell (issue 17.8, scripts/size_quick.sh: the ΔSROCC half-width base vs AAT under
# PGD ε 8 is 0.046 with 96 items over the 10 test photos, photo bootstrap; ~0.14 at 32 items).
# With converged budgets and the half-budget re-run a PGD cell takes ~11 min at 96 items on the
# shared 2-core machine; ATTACKS (default all) and DEFENSES (default none aat r at) select a part.
# --escalate (ESCALATE, default 4): a cell the half-budget check flags runs again at 2×, 4×, … 16×
# its quick budget until the 5 % rule holds (flag [esc]); converged cells are not touched by it.
# Trains what is missing (clean models, then each recipe) into $ROBENCH_HOME. Rerunning skips
# stored cells. On the 2-core CPU machine birqa and lpips.alex take minutes each; topiq.fr
# (36 M parameters, trained from scratch offline) takes hours.
set -euo pipefail
cd "$(dirname "$0")/../.."
STORE=reports/quick/results.sqlite
for model in ${MODELS:-birqa lpips.alex topiq.fr}; do
  for defense in ${DEFENSES:-none aat r at}; do
    robench run --model "$model" --defense "$defense" --attacks "${ATTACKS:-all}" --eps 8 --n "${N:-96}" --store "$STORE" \
      --escalate "${ESCALATE:-4}" --json \
      > "reports/quick/run-${model}-${defense}.json"
  done
done
robench report --store "$STORE" --out reports/quick/report
robench check --store "$STORE" --baseline reports/baseline.json --update
