#!/usr/bin/env bash
# Regenerate the report of every committed store and compare it with the committed one, byte for
# byte (every file but the PDFs, whose writer stamps a date). Exit 1 on any difference. Run from
# the repository root, before and after a change to robench/results/ that must keep its outputs:
#   bash scripts/report_identity.sh            # all stores under reports/ that have a report/
#   bash scripts/report_identity.sh reports/protocols
set -u
cd "$(dirname "$0")/.."
RB=${ROBENCH:-.venv/bin/robench}
dirs=("$@")
[ ${#dirs[@]} -eq 0 ] && for d in reports/*/; do [ -f "$d/results.sqlite" ] && [ -d "$d/report" ] && dirs+=("${d%/}"); done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bad=0
for d in "${dirs[@]}"; do
  name=$(basename "$d")
  # regenerate over a copy of the committed folder, as a rerun in place would (files an earlier
  # report kept, such as the bound plots of a training log this machine lacks, stay)
  cp -r "$d/report" "$tmp/$name"
  "$RB" report --store "$d/results.sqlite" --out "$tmp/$name" --no-pdf > /dev/null 2> "$tmp/$name.err" \
    || { echo "$d: robench report failed:"; tail -3 "$tmp/$name.err"; bad=1; continue; }
  diffs=$(diff -rq -x '*.pdf' "$d/report" "$tmp/$name" || true)
  if [ -n "$diffs" ]; then echo "$d: differs"; echo "$diffs" | sed 's/^/  /'; bad=1
  else echo "$d: identical ($(find "$tmp/$name" -type f ! -name '*.pdf' | wc -l) files)"; fi
done
exit $bad
