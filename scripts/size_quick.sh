#!/usr/bin/env bash
# Issue 17.8: how many items per cell does the ΔSROCC interval (base vs AAT, PGD ε 8/255, photo
# bootstrap) need to reach half-width ≤ 0.05? Runs PGD ε 8 on base BiRQA and BiRQA-AAT at each N
# in $NS (one store per N, so each N is its own item sample) and prints the half-width per N.
# Trains birqa and birqa.aat into $ROBENCH_HOME if missing. Usage: NS="32 96" bash scripts/size_quick.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-sizing}
mkdir -p "$OUT"
for n in ${NS:-32 96}; do
  store="$OUT/pgd-n$n.sqlite"
  for defense in none aat; do
    /usr/bin/time -f "n=$n $defense %e s" robench run --model birqa --defense "$defense" --attacks pgd --eps 8 \
      --n "$n" --store "$store" --json > "$OUT/run-n$n-$defense.json"
  done
  robench report --store "$store" --out "$OUT/report-n$n" --json > /dev/null
  python - "$OUT/report-n$n/report.json" "$n" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for c in r["comparisons"]:
    if c["attack"] == "pgd" and c["versus"] == "none" and c["metric"] == "SROCC":
        print(f"N={sys.argv[2]} {c['target']} vs base, PGD eps {c['eps']}: dSROCC {c['delta']:+.3f} "
              f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] half-width {(c['ci_high'] - c['ci_low']) / 2:.3f} "
              f"({c['n_clusters']} units; {c['units']})")
PY
done
