"""The half-budget rule for PGD settings: each setting's directed move at its full and at its half
budget on the same items, with the time of each run.

    python scripts/half_budget_probe.py "hb40:steps=40,restarts=1,patience=5" \
        "hb40s1:steps=40,restarts=1,patience=5,step0=1.0" --model birqa --n 32 --eps 4

Items: a seeded subset of the quick test split (the first ``--n`` of a permutation of 96 items),
directions from the ranking attack's MOS split of the 96. One thread. A setting is
``name:param=value,...`` (PGD parameters over the quick profile's). The rule flags a cell when the
full budget's mean directed gain exceeds the half budget's by more than 5 % of it (``gap``)."""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--model", default="birqa")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--eps", type=float, default=4.0)
    args = ap.parse_args()

    import numpy as np
    import torch

    from robench.attacks.pgd import PGD
    from robench.core.config import dataset_options_for
    from robench.core.profiles import get_profile
    from robench.core.registry import default_dataset
    from robench.engine.cell import direction_signs
    from robench.engine.items import load_items
    from robench.models import load_model

    torch.set_num_threads(1)
    ds = default_dataset()
    items = load_items(ds, "test", 96, 0, dataset_options_for(ds, get_profile("quick"), {}))
    signs = direction_signs("mos-split", items)[0]
    idx = torch.as_tensor(np.sort(np.random.default_rng(0).permutation(len(items))[: args.n]))
    dist, ref, s = items.dist[idx], items.ref[idx], signs[idx]
    target = load_model(args.model)
    for spec in args.configs:
        name, _, rest = spec.partition(":")
        params = {}
        for kv in filter(None, rest.split(",")):
            k, _, v = kv.partition("=")
            params[k] = json.loads(v) if v[:1].isdigit() or v == "null" else v
        full = PGD(profile="quick", seed=0, **params)
        moves = []
        for attack in (full, PGD(profile="quick", seed=0, **full.half_budget())):
            t0 = time.perf_counter()
            r = attack(target, dist, ref, eps=[args.eps / 255], return_images=False, batch_size=args.n, signs=s)
            g = (r.scores[0] - r.clean_scores) * s * (-1 if target.lower_better else 1)
            moves.append((time.perf_counter() - t0, float(g[s < 0].mean()), float(g[s > 0].mean()), float(g.mean())))
        (tf, df, uf, mf), (th, dh, uh, mh) = moves
        print(
            f"{name}: full {tf:.0f} s, move down {df:.4f} up {uf:.4f} | half {th:.0f} s, down {dh:.4f} up {uh:.4f}"
            f" | gap {(mf - mh) / mf:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
