"""Universal adversarial perturbation (UAP): one perturbation per target, ε and direction,
trained on the dataset's **train** split and applied unchanged to every test image.

Training: stochastic gradient ascent on the mean directed oriented quality ``sign · q`` of train
batches (Moosavi-Dezfooli et al. 2017's objective in its gradient form, as Shumitskaya et al.
2022 train UAPs against no-reference metrics): a signed step of ``lr · ε`` with a cosine decay,
projected to ``‖δ‖∞ ≤ ε`` after each step. **Size-independent by tiling**: the perturbation is a
``tile × tile`` patch repeated over the image (and cropped at its right and bottom edges), so one
patch serves every image size and a crop of a photo sees the same pattern; resizing would change
its L∞ norm after interpolation and its frequency content with the image size.

Patches are cached under ``$ROBENCH_HOME/attacks/uap/<key>/`` with their provenance; the key
covers the target's weights digest, its defence, every hyper-parameter, the dataset, the seed,
ε and the direction (a changed target never reuses a stale patch)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch

from robench.attacks._cache import publish
from robench.attacks.base import Attack, Param
from robench.core.home import robench_home
from robench.core.progress import progress_bar
from robench.core.registry import ATTACKS
from robench.core.target import fingerprint

VERSION = 1  # bump when the training changes


def tile_to(patch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``patch`` (3×t×t) repeated over ``height × width`` (cropped at the far edges)."""
    t_h, t_w = patch.shape[-2:]
    reps = (1, math.ceil(height / t_h), math.ceil(width / t_w))
    return patch.repeat(*reps)[:, :height, :width]


@ATTACKS.register(
    "uap",
    summary="universal perturbation: one tiled patch per target, ε and direction, trained on "
    "the train split, applied unchanged to every test image",
)
class UAP(Attack):
    kind = "fixed"
    needs = "gradients"  # to train the patch; applying it is one addition
    iterative = False
    tile: Param[int] = Param(64, "side of the universal patch, tiled over the image")
    steps: Param[int] = Param(120, "patch training steps", budget=True)
    batch: Param[int] = Param(16, "training batch")
    lr: Param[float] = Param(0.1, "Adam learning rate of the patch")
    dataset: Param[str] = Param("mini", "dataset the patch trains on (the engine sets the run's)")
    dataset_options: Param[dict] = Param({}, "that dataset's options (the engine sets the run's)")
    suite = 9
    # quick: 120 steps of batch 16 (≈ 1 900 train images, ~1.5 epochs of mini's train split);
    # paper: 2 000 steps on the 512-px sets
    budgets = {"quick": {"steps": 120}, "paper": {"steps": 2000}}
    #: measured (reports/bench/attack-strength.md): lowest ratio to a converged reference per way
    strength = {"quick": {"down": 0.138, "up": 0.004}}
    test_options = {"steps": 3, "batch": 4, "tile": 16}
    # the check's cost is the patch's training, whatever the items: it applies it to all
    check_all_items = True
    training_data_params = ("dataset", "dataset_options")

    def __init__(self, profile: str = "quick", seed: int = 0, **params):
        super().__init__(profile=profile, seed=seed, **params)
        self.patches: dict[tuple[float, int], torch.Tensor] = {}
        self.patch_info: dict[str, dict] = {}

    def cost(self) -> dict[str, float]:
        return {"grad": 0, "forward": 1}  # one addition; the patch's training is the setup cost

    def setup_cost(self, train_items: int) -> float:
        return float(int(self.steps) * int(self.batch))

    def cache_key(self, target, eps: float, sign: int) -> dict:
        return {
            "version": VERSION,
            "target": target.card.name,
            "target_sha256": fingerprint(target),
            "defense": getattr(target, "defense_config", None),
            "params": self.params,
            "seed": self.seed,
            "eps": round(float(eps), 10),
            "direction": "up" if sign > 0 else "down",
        }

    def prepare(self, target) -> None:
        self.patches, self.patch_info = {}, {}

    def patch(self, target, eps: float, sign: int) -> torch.Tensor:
        k = (round(float(eps), 10), int(sign))
        if k not in self.patches:
            key = self.cache_key(target, eps, sign)
            digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
            folder = robench_home() / "attacks" / "uap" / digest[:16]
            if (folder / "meta.json").is_file():
                from robench.core.weights import load_state_dict

                meta = json.loads((folder / "meta.json").read_text())
                p = load_state_dict(folder / "patch.safetensors", sha256=meta["sha256"])["patch"]
            else:
                p, meta = self._train(target, key, folder, float(eps), int(sign))
            self.patches[k] = p.to(target.device)
            self.patch_info[f"{eps * 255:g}/255 {'up' if sign > 0 else 'down'}"] = {
                "path": str(folder),
                "sha256": meta["sha256"],
                "train_seconds": meta["train_seconds"],
            }
        return self.patches[k]

    def _train(self, target, key: dict, folder: Path, eps: float, sign: int) -> tuple[torch.Tensor, dict]:
        from torch.utils.data import DataLoader

        from robench.core.registry import DATASETS

        data = DATASETS.get(self.dataset)(split="train", **dict(self.dataset_options))
        g = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(data, batch_size=int(self.batch), shuffle=True, generator=g, drop_last=True)
        steps, t = int(self.steps), int(self.tile)
        dev = target.device
        patch = torch.zeros(3, t, t, device=dev)
        t0 = time.perf_counter()
        done = 0
        with progress_bar() as bar:
            task = (
                bar.add_task(
                    f"uap: patch for {target.card.name} at {eps * 255:g}/255" + ("" if sign > 0 else " (down)"),
                    total=steps,
                )
                if bar
                else None
            )
            while done < steps:
                for batch in loader:
                    ref, dist = batch["ref"].to(dev), batch["dist"].to(dev)
                    p = patch.clone().requires_grad_(True)
                    with torch.enable_grad():
                        adv = (dist + tile_to(p, *dist.shape[-2:])).clamp(0.0, 1.0)
                        obj = (sign * target.oriented_quality(adv, ref)).mean()
                        (grad,) = torch.autograd.grad(obj, p)
                    lr = float(self.lr) * eps * 0.5 * (1 + math.cos(math.pi * done / steps))
                    patch = (patch + lr * grad.sign()).clamp(-eps, eps)
                    done += 1
                    if bar:
                        bar.advance(task)
                    if done >= steps:
                        break
        meta = publish(
            folder,
            {"patch": patch.detach().cpu().contiguous()},
            "patch.safetensors",
            {
                "train_seconds": time.perf_counter() - t0,
                "steps": steps,
                "key": key,
                "trained_on": {"dataset": self.dataset, "split": "train", "options": dict(self.dataset_options)},
            },
        )
        from robench.core.weights import load_state_dict

        return load_state_dict(folder / "patch.safetensors", sha256=meta["sha256"])["patch"], meta

    def trained(self):
        return dict(self.patch_info) or None

    def perturb(self, f, x, eps, q0):
        sign = f.sign if f.sign is not None else torch.ones(x.shape[0], device=x.device)
        delta = torch.zeros_like(x)
        for s in (1, -1):
            rows = sign == s
            if rows.any():
                delta[rows] = tile_to(self.patch(f.target, eps, s), *x.shape[-2:])
        return (x + delta).clamp(0.0, 1.0)
