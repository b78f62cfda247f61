"""Measure how far the neural OT back end is from the exact (POT-equivalent) one on real mini
data: IR-Score of SSIM against PSNR as its 'base' under FGSM at ε 2/255 and 8/255, 60 test items,
with photo-bootstrap intervals, for neural fits with several seeds.

    python scripts/ot_agreement.py [--seeds 0,1,2]

Prints one line per back end / seed: IR, its 95 % interval and the fit time."""

import argparse
import time

import numpy as np

import robench
from robench.engine.items import load_items
from robench.results.transport import MapCache, ir_interval, ir_score

ap = argparse.ArgumentParser()
ap.add_argument("--seeds", default="0,1,2")
args = ap.parse_args()
items = load_items("mini", "test", 60, 0, {"size": 32, "crops_per_source": 1})
mos, src = np.asarray(items.labels["mos"]), np.asarray(items.labels["source"])
sides = {}
for name in ("psnr", "ssim"):
    t = robench.load_model(name)
    res = robench.load_attack("fgsm")(t, items.dist, items.ref, eps=[2 / 255, 8 / 255], return_images=False)
    sides[name] = tuple(x.numpy() for x in res.oriented(t.lower_better))
r = ir_score(sides["psnr"], sides["ssim"], mos, MapCache("exact"))
print(f"exact          IR {r['ir']:.3f} CI {ir_interval(r, clusters=src, n_resamples=500)}")
for seed in (int(s) for s in args.seeds.split(",")):
    t0 = time.time()
    r = ir_score(sides["psnr"], sides["ssim"], mos, MapCache("neural", seed=seed))
    lo, hi = ir_interval(r, clusters=src, n_resamples=500)
    print(f"neural seed {seed} IR {r['ir']:.3f} CI ({lo:.3f}, {hi:.3f})  {time.time() - t0:.0f} s", flush=True)
