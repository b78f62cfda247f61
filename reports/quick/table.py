"""Interim Markdown table of reports/quick/run-*.json (the reporter issue replaces this with
`robench report`): clean and attacked SROCC at ε = 8/255 per target × defence."""

import json
import sys
from pathlib import Path

here = Path(__file__).parent
ATTACKS = ["fgsm", "pgd", "cw", "autoattack", "square", "parsimonious", "facpa"]
lines = ["| target | defence | weights | clean | " + " | ".join(ATTACKS) + " |",
         "|---|---|---|---|" + "---|" * len(ATTACKS)]
for model in ("birqa", "lpips.alex", "topiq.fr"):
    for defense in ("none", "r", "at", "aat"):
        f = here / f"run-{model}-{defense}.json"
        if not f.is_file() or not f.read_text().strip():
            continue
        r = json.loads(f.read_text())
        cells = {c["attack"]: c["summary"] for c in r["cells"] if c.get("summary")}
        clean = next(iter(cells.values()))["clean_srocc"]
        row = [r["target"], defense, r["weights"], f"{clean:.3f}"]
        row += [f"{cells[a]['attacked_srocc'][0]:.3f}" if a in cells else "—" for a in ATTACKS]
        lines.append("| " + " | ".join(row) + " |")
sys.stdout.write("\n".join(lines) + "\n")
