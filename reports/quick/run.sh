#!/usr/bin/env bash
# The paper's comparison (Table 3 shape) on the quick profile: base / R / AT / AAT × {birqa,
# lpips.alex, topiq.fr} × all seven attacks at ε = 8/255, stored in reports/quick/results.sqlite,
# then the reporter's tables and plots (reports/quick/report/) and the baseline `robench check`
# compares against (reports/baseline.json).
# 16 items per cell (N=32 for the profile's default): with converged attack budgets and the
# convergence re-run at half budget, a BiRQA row of eight attacks takes ~15 min on 2 cores.
# Trains what is missing (clean models, then each recipe) into $ROBENCH_HOME. Rerunning skips
# stored cells. On the 2-core CPU machine birqa and lpips.alex take minutes each; topiq.fr
# (36 M parameters, trained from scratch offline) takes hours.
set -euo pipefail
cd "$(dirname "$0")/../.."
STORE=reports/quick/results.sqlite
for model in ${MODELS:-birqa lpips.alex topiq.fr}; do
  for defense in ${DEFENSES:-none aat r at}; do
    robench run --model "$model" --defense "$defense" --attacks all --eps 8 --n "${N:-16}" --store "$STORE" --json \
      > "reports/quick/run-${model}-${defense}.json"
  done
done
robench report --store "$STORE" --out reports/quick/report
robench check --store "$STORE" --baseline reports/baseline.json --update
