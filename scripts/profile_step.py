"""The top operations of one attack step (forward of the distorted branch + ∂q/∂x, reference
branch cached), by self CPU time, for today's textbook kernels and for robench's fast ones.

    python scripts/profile_step.py --model birqa --size 128 --batch 32 --threads 1 --top 12
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from robench.attacks.base import ModeGuard
from robench.core.device import tune_cpu_allocator
from robench.models import load_model
from robench.models.kernels import reference_kernels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="birqa")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument(
        "--paths", default="fast,textbook", help="which paths, in this order (each after its own warm-up step)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = load_model(args.model, weights="none")
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    dist = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    with ModeGuard(target):
        for mode in args.paths.split(","):
            tune_cpu_allocator(mode == "fast")
            with reference_kernels(mode == "textbook"):
                f = target.bind(ref, cache=True)

                def step():
                    x = dist.clone().requires_grad_(True)
                    torch.autograd.grad(f(x).sum(), x)

                step()
                with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
                    step()
            events = sorted(p.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
            total = sum(e.self_cpu_time_total for e in events)
            print(
                f"\n{args.model}, {mode} kernels, batch {args.batch} at {args.size} px, {args.threads} thread(s): "
                f"{total / 1e3:.0f} ms self CPU"
            )
            print("| ms | % | calls | op | input shapes |\n|---|---|---|---|---|")
            for e in events[: args.top]:
                shapes = ", ".join(str(tuple(s)) for s in e.input_shapes[:2] if s)
                print(
                    f"| {e.self_cpu_time_total / 1e3:.1f} | {100 * e.self_cpu_time_total / total:.1f} | {e.count} | "
                    f"{e.key} | {shapes} |"
                )


if __name__ == "__main__":
    main()
