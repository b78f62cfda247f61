#!/usr/bin/env bash
# What no peer tool offers for full-reference metrics, measured on the quick profile (mini v2 test
# split, 128 px): certified score intervals by median smoothing, the N×N transfer matrix between five
# metrics, universal perturbations, and 2AFC decision flips. Stored in
# reports/extensions/results.sqlite, reported in reports/extensions/report/ (README there).
# Rerunning skips what is stored (cells, transfer pairs, certified items). Trains what is missing
# into $ROBENCH_HOME first (LPIPS-Alex and TOPIQ-FR from random initialisation: no ImageNet trunk
# offline; measured here: LPIPS-Alex 159 s, TOPIQ-FR 3 821 s while other jobs ran). The kept adversarial images (reports/extensions/results-images/, 196 736 bytes each) are
# not committed: `robench transfer` re-scores them, the store keeps its rows.
set -euo pipefail
cd "$(dirname "$0")/../.."
STORE=reports/extensions/results.sqlite
OUT=reports/extensions
N=${N:-32}
SOURCES=${SOURCES:-birqa,lpips.alex,topiq.fr,ssim,ms-ssim}
# the UAP rows: TOPIQ-FR left out (its step costs 2.6× BiRQA's: robench bench kernels)
UAP_MODELS=${UAP_MODELS:-birqa,lpips.alex,ssim,ms-ssim}
# 1. PGD (quick: 80 steps) at ε 8/255 against each of the five metrics, both protocols, images kept
robench run --model "$SOURCES" --attacks pgd --eps 8 --n "$N" --direction up,mos-split --keep-images \
  --store "$STORE" --json > "$OUT/run-pgd.json"
# 2. every source's images scored by every metric (no attack recomputed)
robench transfer --source "$SOURCES" --to "$SOURCES" --store "$STORE" --json > "$OUT/transfer.json"
# 3. universal perturbations beside FGSM
robench run --model "$UAP_MODELS" --attacks fgsm,uap --eps 8 --n "$N" --direction up,mos-split \
  --store "$STORE" --json > "$OUT/run-uap.json"
# 4. certified intervals with the check attack (L2 PGD on the smoothed score, both directions)
for model in ssim birqa; do
  robench certify --model "$model" --check-attack pgd --store "$STORE" --json > "$OUT/certify-$model.json"
done
# 5. 2AFC decision flips on the built-in 2AFC set
robench run --model birqa,lpips.alex,ssim --dataset mini-2afc --attacks fgsm,pgd --eps 2,8 --n "$N" \
  --store "$STORE" --json > "$OUT/run-2afc.json"
robench report --store "$STORE" --out "$OUT/report" --no-pdf
