"""Benchmarks (``robench bench ...``): measured side by side in one process, so ratios compare
like with like. Figures depend on the machine; the JSON output names it."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import torch

from robench.target import count_parameters


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": "cpu"}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def speed(models: list[str], size: tuple[int, int] = (512, 384), batch: int = 1, rounds: int = 5, warmup: int = 2,
          device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Images per second, end to end (analytic features included), for each model on random
    ``batch×3×H×W`` pairs; rounds interleave the models so drift hits all alike."""
    from robench.models import load_model

    w, h = size
    gen = torch.Generator().manual_seed(seed)
    ref = torch.rand(batch, 3, h, w, generator=gen).to(device)
    dist = (ref + 0.05 * torch.randn(batch, 3, h, w, generator=gen).to(device)).clamp(0, 1)
    # speed does not depend on weight values: random initialisation needs no weight files
    targets = {m: load_model(m, weights="none", device=device) for m in models}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = {m: 0.0 for m in models}
    with torch.inference_mode():
        for m, t in targets.items():
            for _ in range(warmup):
                t(dist, ref)
        sync()
        for _ in range(rounds):
            for m, t in targets.items():
                t0 = time.perf_counter()
                t(dist, ref)
                sync()
                times[m] += time.perf_counter() - t0
    rows = []
    for m, t in targets.items():
        rows.append({"model": m, "images_per_s": rounds * batch / times[m], "seconds_per_image": times[m] / (rounds * batch),
                     "parameters": count_parameters(t) - count_parameters(t.calibration)})
    ref_row = next((r for r in rows if r["model"] == "topiq.fr"), None)
    for r in rows:
        r["ratio_to_topiq.fr"] = r["images_per_s"] / ref_row["images_per_s"] if ref_row else None
    return {"size": f"{w}x{h}", "batch": batch, "rounds": rounds, "machine": machine(), "results": rows}
