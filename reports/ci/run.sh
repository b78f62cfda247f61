#!/usr/bin/env bash
# The small suite that .ci/run gates on with `robench check` against reports/ci/baseline.json:
# SSIM (analytic: no training, no weights to fetch) on the built-in mini test split, pairs and
# 2AFC, white-box and black-box attacks, two budgets. Minutes on 2 CPU cores, deterministic.
# Regenerate the baseline (after an intended change) with:
#   bash reports/ci/run.sh /tmp/ci.sqlite && robench check --store /tmp/ci.sqlite --baseline reports/ci/baseline.json --update
set -euo pipefail
STORE=${1:?usage: reports/ci/run.sh STORE.sqlite}
robench run --model ssim --attacks fgsm,pgd,square --direction up --eps 2,8 --n 64 --store "$STORE" --json > /dev/null
robench run --model ssim --dataset mini-2afc --attacks fgsm,square --eps 8 --n 32 --store "$STORE" --json > /dev/null
