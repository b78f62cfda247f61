"""DiffPure (Nie et al., ICML 2022) for IQA: diffuse ``dist`` to ``t*``
(``x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε``), then denoise back to 0 with a learned ε-predictor.

No pretrained diffusion weights can be downloaded here, so ``robench train --defense diffpure
--dataset mini`` trains a small DDPM (linear β 1e-4…0.02 over T = 1000 steps, ε-prediction, a
time-conditioned U-Net) on the dataset's training **reference** images (random crops) and
registers it as weights ``diffpure.<dataset>``. A bigger diffusers-format ``UNet2DModel``
(``config.json`` + weights; ``diffusers`` must be installed) loads with ``path=``.

IQA needs a small ``t*`` — a few of the 1000 steps — or the purified image no longer has the
distortion being scored. The reverse pass is DDIM (η = 0) over ``steps`` evenly spaced timesteps
from ``t*`` to 0; it is differentiable, so attacks differentiate through the whole loop (exact
gradient, randomised by the forward noise → EOT); ``bpda=True`` uses the identity backward.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robench.defenses.wrappers import InferenceDefense, bpda
from robench.core.errors import RobenchError
from robench.core.registry import DEFENSES
from robench.core.training import TrainTask, Trainer, config_hash, write_json_atomic

T = 1000


def alphas_bar(device=None) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float().to(device)


class TinyUNet(nn.Module):
    """ε-predictor: two-level U-Net, sinusoidal time embedding added at every block."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.width = w
        self.temb = nn.Sequential(nn.Linear(w, 4 * w), nn.SiLU(), nn.Linear(4 * w, 4 * w))
        self.inp = nn.Conv2d(3, w, 3, padding=1)
        self.e1, self.e2, self.mid = self._block(w, w), self._block(w, 2 * w), self._block(2 * w, 2 * w)
        self.d2, self.d1 = self._block(4 * w, w), self._block(2 * w, w)
        self.t1, self.t2, self.tm, self.td2, self.td1 = (nn.Linear(4 * w, c) for c in (w, 2 * w, 2 * w, w, w))
        self.out = nn.Conv2d(w, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _block(i: int, o: int) -> nn.Module:
        return nn.Sequential(
            nn.GroupNorm(min(8, i), i),
            nn.SiLU(),
            nn.Conv2d(i, o, 3, padding=1),
            nn.GroupNorm(min(8, o), o),
            nn.SiLU(),
            nn.Conv2d(o, o, 3, padding=1),
        )

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        half = self.width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        a = t.float().view(-1, 1) * freqs.view(1, -1)
        return self.temb(torch.cat([a.sin(), a.cos()], dim=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e = self.embed(t)
        add = lambda h, lin: h + lin(e).view(e.shape[0], -1, 1, 1)  # noqa: E731
        h0 = self.inp(x)
        h1 = add(self.e1(h0), self.t1)
        h2 = add(self.e2(F.avg_pool2d(h1, 2, ceil_mode=True)), self.t2)
        m = add(self.mid(F.avg_pool2d(h2, 2, ceil_mode=True)), self.tm)
        u2 = add(self.d2(torch.cat([F.interpolate(m, size=h2.shape[-2:], mode="nearest"), h2], 1)), self.td2)
        u1 = add(self.d1(torch.cat([F.interpolate(u2, size=h1.shape[-2:], mode="nearest"), h1], 1)), self.td1)
        return self.out(u1)


class _DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` behind the same ``(x, t) → ε`` call."""

    def __init__(self, path: str):
        super().__init__()
        try:
            from diffusers import UNet2DModel
        except ImportError:
            raise RobenchError("loading a diffusers-format DiffPure checkpoint needs `pip install diffusers`") from None
        if not (Path(path) / "config.json").is_file():
            raise RobenchError(f"{path} is not a diffusers UNet2DModel folder (no config.json)")
        self.unet = UNet2DModel.from_pretrained(path, use_safetensors=True)

    def forward(self, x, t):
        return self.unet(x, t).sample


@DEFENSES.register("diffpure", summary="DiffPure: diffuse dist to t*, DDIM-denoise back (small DDPM trained here); EOT")
class DiffPure(InferenceDefense):
    randomised = True
    defaults = {"t_star": 10, "steps": 5, "weights": "diffpure.mini", "path": None, "bpda": False}
    test_options = {"t_star": 4, "steps": 2}

    @classmethod
    def prepare(
        cls,
        options: dict[str, Any],
        *,
        dataset: str,
        dataset_options: dict[str, Any],
        profile: str,
        seed: int,
        progress: bool = True,
        device: str = "cpu",
        **_: Any,
    ) -> None:
        """``--defense ...+diffpure`` without a denoiser: train the small DDPM first (on the
        dataset its weights name, ``diffpure.<dataset>``)."""
        from robench.core import weights as W
        from robench.core.registry import default_dataset

        if options.get("path"):
            return
        name = str(options.get("weights", cls.defaults["weights"]))
        if W.lookup(name) is None:
            ds = name.split(".", 1)[1] if "." in name else default_dataset()
            train_diffpure(
                dataset=ds,
                profile=profile,
                seed=seed,
                dataset_options=dict(dataset_options) if ds == dataset else {},
                progress=progress,
                device=device,
            )

    def __init__(self, **params: Any):
        super().__init__(**params)
        if self.params["bpda"]:
            self.gradient = "bpda"
        t_star, steps = int(self.params["t_star"]), int(self.params["steps"])
        if not (1 <= t_star < T) or not (1 <= steps <= t_star):
            raise RobenchError(f"diffpure needs 1 ≤ steps ≤ t_star < {T}, got t_star={t_star}, steps={steps}")
        self.model = self._load()
        self.model.eval().requires_grad_(False)
        self.register_buffer("abar", alphas_bar(), persistent=False)

    def _load(self) -> nn.Module:
        if self.params["path"]:
            return _DiffusersUNet(str(self.params["path"]))
        from robench.core import weights as W

        entry = W.lookup(str(self.params["weights"]))
        if entry is None:
            ds = str(self.params["weights"]).split(".", 1)[-1]
            raise RobenchError(
                f"no DiffPure denoiser {self.params['weights']!r}: `robench train --defense diffpure "
                f"--dataset {ds}` trains one here, or pass path=<diffusers UNet2DModel folder>"
            )
        meta = W.checkpoint_meta(entry["path"])[0]
        net = TinyUNet(int(meta.get("width", 32)))
        W.load_into(net, W.load_state_dict(entry["path"], sha256=entry["sha256"]), entry["path"])
        self.weights_sha256 = entry["sha256"]
        return net

    def config(self) -> dict[str, Any]:
        c = super().config()
        c["weights_sha256"] = getattr(self, "weights_sha256", None)
        return c

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        t_star, steps = int(self.params["t_star"]), int(self.params["steps"])
        abar = self.abar.to(x.device)
        z = x * 2 - 1
        a = abar[t_star - 1]
        z = a.sqrt() * z + (1 - a).sqrt() * torch.randn_like(z)
        ts = sorted(set(torch.linspace(t_star - 1, 0, steps + 1).round().long().tolist()), reverse=True)
        for t, t_next in zip(ts[:-1], ts[1:]):  # DDIM (η = 0) from t* down to 0
            at, an = abar[t], abar[t_next]
            eps = self.model(z, torch.full((z.shape[0],), t, device=z.device))
            z0 = (z - (1 - at).sqrt() * eps) / at.sqrt()
            z = an.sqrt() * z0 + (1 - an).sqrt() * eps
        eps = self.model(z, torch.zeros(z.shape[0], dtype=torch.long, device=z.device))
        z = (z - (1 - abar[0]).sqrt() * eps) / abar[0].sqrt()
        return (z.clamp(-1, 1) + 1) / 2

    def forward(self, dist, ref):
        out = self.purify(dist)
        return (bpda(dist, out) if self.params["bpda"] else out), ref


class _DDPMTask(TrainTask):
    """ε-prediction on random crops (and flips) of the training references at uniform timesteps."""

    def __init__(
        self,
        net: TinyUNet,
        refs: torch.Tensor,
        batch: int,
        crop: int,
        seed: int,
        dataset: str,
        log_extra: dict[str, Any],
    ):
        self.module, self.refs, self.batch, self.crop, self.seed = net, refs, batch, crop, seed
        self.title = f"diffpure: DDPM on {dataset} references"
        self.abar = alphas_bar()
        self.log_extra = log_extra

    def make_batch(self, step: int, gen: torch.Generator):
        idx = torch.randint(0, len(self.refs), (self.batch,), generator=gen)
        x = self.refs[idx]
        c = min(self.crop, *x.shape[-2:])
        ys = torch.randint(0, x.shape[-2] - c + 1, (1,), generator=gen).item()
        xs = torch.randint(0, x.shape[-1] - c + 1, (1,), generator=gen).item()
        x = x[..., ys : ys + c, xs : xs + c] * 2 - 1
        flip = torch.rand(self.batch, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        t = torch.randint(0, T, (self.batch,), generator=gen)
        noise = torch.randn(x.shape, generator=gen)
        return x, t, noise

    def loss(self, batch):
        x, t, noise = batch
        a = self.abar.to(x.device)[t].view(-1, 1, 1, 1)
        return F.mse_loss(self.module(a.sqrt() * x + (1 - a).sqrt() * noise, t), noise), {}

    def write_log(self, out: Path, rows: list[dict[str, Any]]) -> None:
        write_json_atomic(out / "log.json", {"losses": [r["loss"] for r in rows], **self.log_extra})

    def fault_point(self, done: int) -> str:
        return f"diffpure:{done}"


def train_diffpure(
    dataset: str = "mini",
    profile: str = "quick",
    steps: int | None = None,
    seed: int = 0,
    width: int = 32,
    batch: int = 16,
    crop: int = 64,
    lr: float = 2e-4,
    dataset_options: dict | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train the ε-predictor on the train split's reference images; register ``diffpure.<dataset>``.
    Resumable: a rerun of the same configuration continues from ``out/last.pt``."""
    import numpy as np

    from robench.core import weights as W
    from robench.core.registry import DATASETS
    from robench.core.home import robench_home
    from robench.core.profiles import get_profile
    from robench.core.device import device_record, resolve_device
    from robench.core.provenance import git_commit, versions

    dev = resolve_device(device)
    prof = get_profile(profile)
    n_steps = int(steps or (400 if prof.name == "quick" else 50_000))
    cls = DATASETS.get(dataset)
    opts = {**cls.profile_options(prof), **(dataset_options or {})}  # a built set's image size
    data = cls(split="train", **opts)
    first = {}
    for i in range(len(data)):  # one copy of each reference
        rid = data.table.iloc[i]["ref_id"]
        if rid not in first:
            first[rid] = i
    refs = torch.stack([data[i]["ref"] for i in first.values()])
    with torch.random.fork_rng(devices=[]):  # a seeded initialisation, without touching the caller's RNG
        torch.manual_seed(seed)
        net = TinyUNet(width)
    net = net.to(dev)  # initialised on the CPU (the same weights on any device); batches follow it
    schedule = "linear beta 1e-4..0.02, T=1000"
    run_cfg = {
        "dataset": dataset,
        "dataset_options": opts,
        "profile": prof.name,
        "seed": seed,
        "width": width,
        "batch": batch,
        "crop": crop,
        "lr": lr,
        "schedule": schedule,
        "steps": n_steps,
    }
    out = Path(out) if out else robench_home() / "runs" / "train" / f"diffpure-{dataset}-{prof.name}-seed{seed}"
    task = _DDPMTask(net, refs, batch, crop, seed, dataset, {"config": run_cfg})
    trainer = Trainer(
        task, out, config_hash(run_cfg, exclude=("steps",)), n_steps, lr, checkpoint_every=250, progress=progress
    ).run()
    losses = [r["loss"] for r in trainer.rows]
    seconds = trainer.clock.elapsed
    provenance = {
        "dataset": dataset,
        "split": "train",
        "images": "reference images",
        "n_images": len(refs),
        "steps": n_steps,
        "batch": batch,
        "crop": crop,
        "lr": lr,
        "schedule": schedule,
        "final_loss": float(np.mean(losses[-50:])),
        "train_seconds": round(seconds, 2),
        "seed": seed,
        "profile": prof.name,
        "git_commit": git_commit(),
        "versions": versions(),
        "run": str(out),
        "device": device_record(dev),
    }
    path = out / "denoiser.safetensors"
    W.save_safetensors(
        net.state_dict(), path, {"config": {"width": width}, "provenance": provenance, "format": "robench-diffpure-v1"}
    )
    task.log_extra = {"provenance": provenance}
    task.write_log(out, trainer.rows)
    entry = W.register(f"diffpure.{dataset}", path, source="trained-here", provenance=provenance)
    return {
        "name": f"diffpure.{dataset}",
        "sha256": entry["sha256"],
        "train_seconds": round(seconds, 1),
        "final_loss": provenance["final_loss"],
        "weights": str(W.weights_dir() / entry["file"]),
    }


# `robench train --defense diffpure` finds the trainer here (the CLI names no defence)
DiffPure.train_weights = staticmethod(train_diffpure)
