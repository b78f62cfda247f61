"""Clean training (``robench train``) and evaluation (``robench eval``).

Loss: the paper's eq. 5, ``MSE(ŷ, y) + λ·(1 − PLCC(ŷ, y))`` with Adam, where ``ŷ`` is the
target's prediction on the MOS scale (BiRQA's head regresses MOS; LPIPS/TOPIQ go through the
learnable affine calibration of method-notes §2 and start from official weights when present).

Each run writes to its folder: ``last.pt`` (weights + optimiser + epoch, for resuming, written
atomically at every epoch end), ``best.safetensors`` (best validation SROCC, with its provenance in
the file's metadata), ``log.csv`` / ``log.json`` (one row per epoch). A rerun of the same command
resumes from ``last.pt``. The best weights are registered in the weights cache under the model
name with source ``trained-here``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from robench.core.provenance import git_commit, versions
from robench.core.errors import RobenchError
from robench.engine.faults import fault
from robench.core.home import robench_home
from robench.core.profiles import Profile, get_profile
from robench.core.progress import progress_bar
from robench.results.stats import correlations


def plcc_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    p, t = pred - pred.mean(), target - target.mean()
    return 1.0 - (p * t).sum() / (p.norm() * t.norm() + eps)


def clean_loss(pred: torch.Tensor, mos: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Paper eq. 5: MSE + λ(1 − PLCC)."""
    return torch.mean((pred - mos) ** 2) + lam * plcc_loss(pred, mos)


def random_crop_pair(ref: torch.Tensor, dist: torch.Tensor, size: int, gen: torch.Generator):
    """The same random crop of every ref/dist pair in the batch (one offset per pair)."""
    n, _, h, w = ref.shape
    if size >= min(h, w):
        return ref, dist
    ys = torch.randint(0, h - size + 1, (n,), generator=gen)
    xs = torch.randint(0, w - size + 1, (n,), generator=gen)
    r = torch.stack([ref[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(zip(ys.tolist(), xs.tolist()))])
    d = torch.stack([dist[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(zip(ys.tolist(), xs.tolist()))])
    return r, d


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + float(np.cos(np.pi * t)))






# --------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def predict(target, dataset, batch_size: int = 64, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Oriented quality ``q`` for every pair of ``dataset`` (and its MOS)."""
    target.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    qs, ms = [], []
    with progress_bar(progress) as bar:
        task = bar.add_task(f"evaluating {target.card.name}", total=len(dataset)) if bar else None
        for b in loader:
            qs.append(target.oriented_quality(b["dist"], b["ref"]).cpu().numpy())
            ms.append(b["mos"].numpy())
            if bar:
                bar.advance(task, len(b["mos"]))
    return np.concatenate(qs), np.concatenate(ms)


def evaluate(target, dataset, batch_size: int = 64, progress: bool = False) -> dict[str, float]:
    if dataset.kind != "pairs":
        raise RobenchError(f"evaluate needs a pairs dataset, {dataset.name} is {dataset.kind}")
    q, mos = predict(target, dataset, batch_size, progress)
    return correlations(q, mos)


# --------------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    name: str
    out: Path
    best_path: Path
    best_val_srocc: float
    best_epoch: int
    epochs: int
    train_seconds: float
    sha256: str
    provenance: dict[str, Any]


def default_out(name: str, dataset: str, profile: str, seed: int) -> Path:
    return robench_home() / "runs" / "train" / f"{name}-{dataset}-{profile}-seed{seed}"


def optimizer_step(loss: torch.Tensor, opt, params, target, clip_grad: float | None) -> None:
    """Backward, optional gradient-norm clipping, step, then the target's constraints
    (``post_step``: LPIPS keeps its lin weights non-negative)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    opt.step()
    target.post_step()


def resume_checkpoint(out: Path, cfg_hash: str, target, opt) -> dict[str, Any] | None:
    """Load ``out/last.pt`` into ``target`` and ``opt`` when it exists and belongs to the same
    configuration (a rerun resumes; a different configuration in the same folder is an error)."""
    last = out / "last.pt"
    if not last.is_file():
        return None
    ck = torch.load(last, map_location="cpu", weights_only=True)
    if ck.get("cfg_hash") != cfg_hash:
        raise RobenchError(f"{out} holds a training run with a different configuration; use another --out")
    target.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optim"])
    return ck


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, rename: a kill or a full disk leaves the
    previous checkpoint whole (a failed temp file is removed)."""
    from robench.core.fetch import fsync_dir

    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself must reach the disk
    finally:
        tmp.unlink(missing_ok=True)


def clean_stale_tmp(out: Path) -> None:
    """Remove ``NAME.<pid>.tmp`` files a killed training left in its run folder (a TOPIQ
    checkpoint with Adam state is ~400 MB); files of a live process are left alone."""
    from robench.core.fetch import clean_stale_tmp_files

    clean_stale_tmp_files(out)


def train(model: str, dataset: str = "mini", profile: str | Profile = "quick", epochs: int | None = None,
          out: str | Path | None = None, seed: int = 0, lr: float | None = None, batch_size: int | None = None,
          max_steps_per_epoch: int | None = None, dataset_options: dict[str, Any] | None = None,
          model_options: dict[str, Any] | None = None, register_as: str | None = None,
          progress: bool = True) -> TrainResult:
    """Train ``model`` on ``dataset`` (train split; val split for model selection)."""
    import robench
    from robench.models import build, split_name
    from robench.core import weights as W

    prof = get_profile(profile)
    base, tag = split_name(model)
    if tag is not None:
        raise RobenchError(f"clean training takes an architecture name, not the variant {model!r}; defended variants "
                           f"come from `robench train --model {base} --defense {tag}`")
    epochs = prof.train_epochs if epochs is None else epochs
    lr = prof.train_lr if lr is None else lr
    batch_size = prof.train_batch if batch_size is None else batch_size
    ds_opts = dict(dataset_options or {})
    if dataset in ("mini", "mini-2afc"):
        ds_opts.setdefault("size", prof.image_size)
        ds_opts.setdefault("seed", seed)
    train_set = robench.load_dataset(dataset, split="train", **ds_opts)
    val_set = robench.load_dataset(dataset, split="val", **ds_opts)
    if train_set.kind != "pairs":
        raise RobenchError(f"clean training needs a pairs dataset; {dataset!r} is {train_set.kind}")

    # the random initialisation is part of the run: seeded, or two runs (or a killed run's first
    # epoch and its rerun) start from different weights
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: fork_rng(devices=[]) does not restore CUDA's
        target = build(base, **(model_options or {}))
    if not getattr(target, "requires_weights", True):
        raise RobenchError(f"{base!r} is an analytic metric: nothing to train")
    start_from = "random"
    if hasattr(target, "official_state"):
        official = target.official_state()
        if official is not None:
            target.load_upstream(official, "official weights")
            start_from = "official"
    config = dict(getattr(target, "config", {}) or (model_options or {}))
    run_cfg = {"model": base, "dataset": dataset, "dataset_options": ds_opts, "profile": prof.to_dict(), "epochs": epochs,
               "lr": lr, "batch_size": batch_size, "seed": seed, "max_steps_per_epoch": max_steps_per_epoch,
               "config": config, "start_from": start_from}
    # everything but the epoch count identifies a run: a rerun with more epochs extends it
    cfg_hash = hashlib.sha256(json.dumps({k: v for k, v in run_cfg.items() if k != "epochs"}, sort_keys=True,
                                         default=str).encode()).hexdigest()[:16]
    out = Path(out) if out is not None else default_out(base, dataset, prof.name, seed)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out)

    params = [p for p in target.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    start_epoch, best, best_epoch, elapsed, rows = 1, -np.inf, 0, 0.0, []
    ck = resume_checkpoint(out, cfg_hash, target, opt)
    if ck is not None:
        start_epoch, best, best_epoch, elapsed = int(ck["epoch"]) + 1, float(ck["best"]), int(ck["best_epoch"]), float(ck["elapsed"])
        if "rows" in ck:
            rows = ck["rows"]
        else:  # checkpoints written before the rows moved into last.pt
            rows = json.loads((out / "log.json").read_text())["epochs"] if (out / "log.json").is_file() else []
        rows = [r for r in rows if r["epoch"] < start_epoch]

    steps_per_epoch = -(-len(train_set) // batch_size)
    if max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"training {base} on {dataset}", total=epochs * steps_per_epoch,
                            completed=(start_epoch - 1) * steps_per_epoch) if bar else None
        for epoch in range(start_epoch, epochs + 1):
            t0 = time.perf_counter()
            # each epoch's randomness derives from (seed, epoch): a resumed run repeats it exactly
            gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            torch.manual_seed(seed * 100_003 + epoch)
            loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=gen, num_workers=0, drop_last=False)
            target.train()
            losses = []
            for step, b in enumerate(loader):
                if step >= steps_per_epoch:
                    break
                global_step = (epoch - 1) * steps_per_epoch + step
                for group in opt.param_groups:
                    group["lr"] = lr * lr_factor(global_step, epochs * steps_per_epoch, prof.train_warmup_steps)
                ref, dist = b["ref"], b["dist"]
                if prof.train_crop:
                    ref, dist = random_crop_pair(ref, dist, prof.train_crop, gen)
                loss = clean_loss(target.predict_mos(dist, ref), b["mos"].float(), prof.train_loss_lambda)
                optimizer_step(loss, opt, params, target, prof.train_clip_grad)
                losses.append(float(loss.detach()))
                if bar:
                    bar.update(task, advance=1, description=f"training {base} · epoch {epoch}/{epochs} · loss {np.mean(losses[-20:]):.3f}")
            val = evaluate(target, val_set, prof.eval_batch)
            elapsed += time.perf_counter() - t0
            row = {"epoch": epoch, "steps": len(losses), "train_loss": float(np.mean(losses)), "val_srocc": val["srocc"],
                   "val_plcc": val["plcc"], "val_krocc": val["krocc"], "seconds": round(elapsed, 2)}
            rows.append(row)
            if val["srocc"] > best:
                best, best_epoch = val["srocc"], epoch
                _save_best(target, out / "best.safetensors", config, {"epoch": epoch, "val_srocc": val["srocc"]})
            _atomic_torch_save({"model": target.state_dict(), "optim": opt.state_dict(), "epoch": epoch, "best": best,
                                "best_epoch": best_epoch, "elapsed": elapsed, "cfg_hash": cfg_hash, "rows": rows},
                               out / "last.pt")  # rows inside: a kill before log.json is written loses none
            fault(f"kill-after-checkpoint:train:{epoch}")
            _write_log(out, rows, run_cfg)
            if bar:
                bar.console.print(f"epoch {epoch}: loss {row['train_loss']:.4f}  val SROCC {val['srocc']:.4f}  "
                                  f"({elapsed:.0f} s)", highlight=False)

    provenance = {"dataset": dataset, "split": "train", "model_selection": "val SROCC", "profile": prof.name,
                  "epochs": epochs, "best_epoch": best_epoch, "val_srocc": best, "seed": seed, "lr": lr,
                  "batch_size": batch_size, "train_seconds": round(elapsed, 2), "start_from": start_from,
                  "dataset_options": ds_opts, "git_commit": git_commit(), "versions": versions(), "run": str(out)}
    best_path = out / "best.safetensors"
    _save_best(target, best_path, config, provenance, reload_from=best_path)
    name = register_as or base
    entry = W.register(name, best_path, source="trained-here", provenance=provenance)
    return TrainResult(name, out, best_path, best, best_epoch, epochs, elapsed, entry["sha256"], provenance)


def _save_best(target, path: Path, config: dict, provenance: dict, reload_from: Path | None = None) -> None:
    from robench.core import weights as W

    if reload_from is not None and reload_from.is_file():  # rewrite the best file with the final provenance
        state = W.load_state_dict(reload_from)
    else:
        state = target.state_dict()
    W.save_safetensors(state, path, {"config": config, "provenance": provenance, "format": "robench-target-v1"})


def _write_log(out: Path, rows: list[dict], run_cfg: dict) -> None:
    tmp = out / f"log.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"config": run_cfg, "epochs": rows}, indent=1, default=str))
    os.replace(tmp, out / "log.json")
    tmp = out / f"log.csv.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    os.replace(tmp, out / "log.csv")
