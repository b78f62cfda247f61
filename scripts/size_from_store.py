"""Issue 17.8: how many items per cell does a ΔSROCC interval need? Measured from a stored grid
without re-running anything.

The stratified item order is prefix-consistent (``stratified_subset(table, k)`` is the first k
picks of ``stratified_subset(table, n)`` for k ≤ n), so the first k items of a stored n-item cell
are exactly the items a k-item run attacks. For each k this recomputes the report's paired
photo bootstrap of ΔSROCC (defence − base) on those items and prints the CI half-width; the
trend over k says whether more items narrow the interval (within-photo noise) or not (between-
photo heterogeneity, which only more photos fix).

    python scripts/size_from_store.py reports/quick/results.sqlite --attack pgd --eps 8 --ks 32,48,64,80,96
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from robench.core.registry import DATASETS
from robench.engine.items import stratified_subset
from robench.results.analysis import Analysis
from robench.results.cells import load_cells
from robench.core.stats import paired_bootstrap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    ap.add_argument("--attack", default="pgd")
    ap.add_argument("--eps", type=float, default=8.0)
    ap.add_argument("--ks", default="32,48,64,80,96")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cells, weights = load_cells(a.store)
    rep = Analysis(cells, weights)
    out = []
    for c in rep.cells:
        if c.attack != a.attack or c.defense == "none":
            continue
        b = rep.cell(rep.base_row(c.row), a.attack, a.eps)
        if b is None or rep.cell(c.row, a.attack, a.eps) is not c:
            continue
        data = DATASETS.get(c.dataset)(split=c.split)
        id_col = next(col for col in ("dist_path", "index") if col in data.table.columns)
        ids = data.table[id_col].astype(str).to_numpy()
        ka, kb = c.eps_index(a.eps), b.eps_index(a.eps)
        for k in [int(x) for x in a.ks.split(",")]:
            want = ids[stratified_subset(data.table, k, c.seed)]
            # aligned like Analysis.compare, then cut to the first k items of the stratified order
            common, ia, ib = np.intersect1d(c.item_ids, b.item_ids, return_indices=True)
            keep = np.isin(common, want)
            if keep.sum() < k:
                continue  # the stored cells do not hold the first k items
            ia, ib = ia[keep], ib[keep]
            cl, _ = rep.units(c, ia)
            res = paired_bootstrap(
                c.q_adv[ka][ia], b.q_adv[kb][ib], c.mos[ia], n_resamples=a.resamples, seed=rep.seed, clusters=cl
            )
            row = {
                "target": c.target,
                "defense": c.defense,
                "k": k,
                "delta": res["delta"],
                "ci": res["ci"],
                "half_width": (res["ci"][1] - res["ci"][0]) / 2,
                "photos": res["n_clusters"],
            }
            out.append(row)
            if not a.json:
                print(
                    f"{c.target:12s} vs base, {a.attack} eps {a.eps:g}, k={k:3d}: dSROCC {row['delta']:+.3f} "
                    f"[{res['ci'][0]:+.3f}, {res['ci'][1]:+.3f}] half-width {row['half_width']:.3f} "
                    f"({row['photos']} photos)"
                )
    if a.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
