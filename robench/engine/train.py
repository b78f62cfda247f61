"""Clean training (``robench train``) and evaluation (``robench eval``).

Loss: the paper's eq. 5, ``MSE(ŷ, y) + λ·(1 − PLCC(ŷ, y))`` with Adam, where ``ŷ`` is the
target's prediction on the MOS scale (BiRQA's head regresses MOS; LPIPS/TOPIQ go through the
learnable affine calibration of docs/method.md §2 and start from official weights when present).

The loop is :class:`robench.core.training.Trainer`; :class:`CleanTask` supplies the batches (one
shuffle per epoch), the loss and the per-epoch validation. Each run writes to its folder:
``last.pt`` (weights + optimiser + step, for resuming, written atomically at every epoch end),
``best.safetensors`` (best validation SROCC, with its provenance in the file's metadata),
``log.csv`` / ``log.json`` (one row per epoch). A rerun of the same command resumes from
``last.pt``. The best weights are registered in the weights cache under the model name with
source ``trained-here``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from robench.core.provenance import git_commit, versions
from robench.core.errors import RobenchError
from robench.core.home import robench_home
from robench.core.profiles import Profile, get_profile
from robench.core.progress import progress_bar
from robench.core.training import TrainTask, Trainer, clean_loss, config_hash, plcc_loss, random_crop_pair  # noqa: F401
from robench.core.stats import correlations


# --------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def predict(target, dataset, batch_size: int = 64, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Oriented quality ``q`` for every pair of ``dataset`` (and its MOS)."""
    target.eval()
    device = target.device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    qs, ms = [], []
    with progress_bar(progress) as bar:
        task = bar.add_task(f"evaluating {target.card.name}", total=len(dataset)) if bar else None
        for b in loader:
            qs.append(target.oriented_quality(b["dist"].to(device), b["ref"].to(device)).cpu().numpy())
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


class CleanTask(TrainTask):
    """Eq. 5 on the train split, one shuffle per epoch; val SROCC selects ``best.safetensors``
    and one log row per epoch goes to ``log.json`` / ``log.csv``."""

    def __init__(
        self,
        target,
        train_set,
        val_set,
        prof: Profile,
        *,
        base: str,
        dataset: str,
        batch_size: int,
        steps_per_epoch: int,
        epochs: int,
        seed: int,
        config: dict,
        run_cfg: dict,
        out: Path,
    ):
        self.module, self.seed, self.title = target, seed, f"training {base} on {dataset}"
        self.base, self.train_set, self.val_set, self.prof = base, train_set, val_set, prof
        self.batch_size, self.spe, self.epochs = batch_size, steps_per_epoch, epochs
        self.config, self.run_cfg, self.out = config, run_cfg, out
        self.best, self.best_epoch, self.epoch_rows = -np.inf, 0, []
        self._gen: torch.Generator | None = None
        self._batches = None

    def generator(self, step: int) -> torch.Generator:
        # one generator per epoch, seeded by (seed, epoch), drives its shuffle and crops (a resumed
        # epoch redoes them exactly)
        # the Trainer: runs keep their batches, and checkpoints (at epoch ends) resume exactly
        if step % self.spe == 0 or self._gen is None:
            s = self.seed * 100_003 + step // self.spe + 1
            self._gen = torch.Generator().manual_seed(s)
            torch.manual_seed(s)
            self._batches = None
        return self._gen

    def make_batch(self, step: int, gen: torch.Generator):
        if self._batches is None:
            self._batches = iter(
                DataLoader(
                    self.train_set,
                    batch_size=self.batch_size,
                    shuffle=True,
                    generator=gen,
                    num_workers=0,
                    drop_last=False,
                )
            )
        b = next(self._batches)
        ref, dist = b["ref"], b["dist"]
        if self.prof.train_crop:
            ref, dist = random_crop_pair(ref, dist, self.prof.train_crop, gen)
        return ref, dist, b["mos"].float()

    def loss(self, batch):
        ref, dist, mos = batch
        self.module.train()  # evaluation at the last epoch end left it in eval mode
        return clean_loss(self.module.predict_mos(dist, ref), mos, self.prof.train_loss_lambda), {}

    def evaluate(self, trainer: Trainer) -> None:
        epoch = trainer.step // self.spe
        losses = [r["loss"] for r in trainer.rows if r["step"] >= (epoch - 1) * self.spe]
        val = evaluate(self.module, self.val_set, self.prof.eval_batch)
        row = {
            "epoch": epoch,
            "steps": len(losses),
            "train_loss": float(np.mean(losses)),
            "val_srocc": val["srocc"],
            "val_plcc": val["plcc"],
            "val_krocc": val["krocc"],
            "loss_ema": trainer.loss_ema,
            "seconds": round(trainer.seconds(), 2),
        }
        self.epoch_rows.append(row)
        if val["srocc"] > self.best:
            self.best, self.best_epoch = val["srocc"], epoch
            _save_best(
                self.module, self.out / "best.safetensors", self.config, {"epoch": epoch, "val_srocc": val["srocc"]}
            )
        trainer.say(
            f"epoch {epoch}: loss {row['train_loss']:.4f}  val SROCC {val['srocc']:.4f}  ({row['seconds']:.0f} s)"
        )

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "epochs": self.epoch_rows}

    def load_state(self, ck: dict[str, Any]) -> None:
        self.best, self.best_epoch = float(ck["best"]), int(ck["best_epoch"])
        self.epoch_rows = [r for r in ck["epochs"] if r["epoch"] <= ck["step"] // self.spe]

    def upgrade_checkpoint(self, ck: dict[str, Any], out: Path) -> dict[str, Any]:
        # before the Trainer: per-epoch checkpoints, ``rows`` = epoch rows (older ones: in log.json)
        if "epoch" not in ck:
            return super().upgrade_checkpoint(ck, out)
        epochs = ck.get("rows")
        if epochs is None:
            epochs = json.loads((out / "log.json").read_text())["epochs"] if (out / "log.json").is_file() else []
        return {**ck, "step": int(ck["epoch"]) * self.spe, "rows": [], "epochs": epochs}

    def write_log(self, out: Path, rows: list[dict[str, Any]]) -> None:
        _write_log(out, self.epoch_rows, self.run_cfg)

    def fault_point(self, done: int) -> str:
        return f"train:{done // self.spe}"

    def describe(self, step: int) -> str:
        return f"training {self.base} · epoch {min(step // self.spe + 1, self.epochs)}/{self.epochs}"


def training_data(dataset: str, prof: Profile, seed: int, options: dict[str, Any] | None, *splits: str):
    """The splits a training run reads, and the options they were opened with: the profile's (a
    built set's image size), for a set built here (one the profile shapes) the run's seed as its
    build seed, then the caller's options."""
    from robench.core.registry import DATASETS

    cls = DATASETS.get(dataset)
    defaults = cls.profile_options(prof)
    if defaults:
        defaults = {**defaults, "seed": seed}
    opts = {**defaults, **(options or {})}
    return opts, [cls(split=s, **opts) for s in splits]


def train(
    model: str,
    dataset: str | None = None,
    profile: str | Profile = "quick",
    epochs: int | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    lr: float | None = None,
    batch_size: int | None = None,
    max_steps_per_epoch: int | None = None,
    dataset_options: dict[str, Any] | None = None,
    model_options: dict[str, Any] | None = None,
    register_as: str | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> TrainResult:
    """Train ``model`` on ``dataset`` (train split; val split for model selection; default: the
    registry's default dataset) on ``device`` (auto | cpu | cuda | cuda:N: recorded in the
    provenance, not part of the run's identity — a run resumes on another device)."""
    from robench.core import weights as W
    from robench.core.device import resolve_device, tune_cpu_allocator
    from robench.core.registry import default_dataset
    from robench.models import split_name

    tune_cpu_allocator()
    dev = resolve_device(device)
    prof = get_profile(profile)
    base, tag = split_name(model)
    if tag is not None:
        raise RobenchError(
            f"clean training takes an architecture name, not the variant {model!r}; defended variants "
            f"come from `robench train --model {base} --defense {tag}`"
        )
    epochs = prof.train_epochs if epochs is None else epochs
    lr = prof.train_lr if lr is None else lr
    batch_size = prof.train_batch if batch_size is None else batch_size
    dataset = dataset or default_dataset()
    ds_opts, (train_set, val_set) = training_data(dataset, prof, seed, dataset_options, "train", "val")
    if train_set.kind != "pairs":
        raise RobenchError(f"clean training needs a pairs dataset; {dataset!r} is {train_set.kind}")

    target, start_from = _initial_target(base, model_options, seed, dev)
    config = dict(getattr(target, "config", {}) or (model_options or {}))
    run_cfg = {
        "model": base,
        "dataset": dataset,
        "dataset_options": ds_opts,
        "profile": prof.to_dict(),
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "max_steps_per_epoch": max_steps_per_epoch,
        "config": config,
        "start_from": start_from,
    }
    # everything but the epoch count identifies a run: a rerun with more epochs extends it
    cfg_hash = config_hash(run_cfg, exclude=("epochs",))
    out = Path(out) if out is not None else default_out(base, dataset, prof.name, seed)

    steps_per_epoch = -(-len(train_set) // batch_size)
    if max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    task = CleanTask(
        target,
        train_set,
        val_set,
        prof,
        base=base,
        dataset=dataset,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        seed=seed,
        config=config,
        run_cfg=run_cfg,
        out=out,
    )
    trainer = Trainer(
        task,
        out,
        cfg_hash,
        epochs * steps_per_epoch,
        lr,
        schedule="warmup-cosine",
        warmup=prof.train_warmup_steps,
        clip_grad=prof.train_clip_grad,
        checkpoint_every=steps_per_epoch,
        progress=progress,
    ).run()
    best, best_epoch, elapsed = task.best, task.best_epoch, trainer.clock.elapsed

    provenance = {
        "dataset": dataset,
        "split": "train",
        "model_selection": "val SROCC",
        "profile": prof.name,
        "epochs": epochs,
        "best_epoch": best_epoch,
        "val_srocc": best,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "train_seconds": round(elapsed, 2),
        "start_from": start_from,
        "dataset_options": ds_opts,
        **run_facts(out, dev),
    }
    best_path = out / "best.safetensors"
    _save_best(target, best_path, config, provenance, reload_from=best_path)
    name = register_as or base
    entry = W.register(name, best_path, source="trained-here", provenance=provenance)
    return TrainResult(name, out, best_path, best, best_epoch, epochs, elapsed, entry["sha256"], provenance)


def _initial_target(base: str, model_options: dict | None, seed: int, dev):
    """The untrained target on ``dev`` and where it starts from (random, or official weights)."""
    from robench.models import build

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
    return target.to(dev), start_from  # initialised on the CPU: the same start on any device


def run_facts(out: Path, dev) -> dict:
    """What reproduces a training run besides its configuration: commit, versions, run folder, device."""
    from robench.core.device import device_record

    return {"git_commit": git_commit(), "versions": versions(), "run": str(out), "device": device_record(dev)}


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
            keys: list[str] = []  # the union: rows of runs resumed from older versions lack loss_ema
            for r in rows:
                keys += [k for k in r if k not in keys]
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    os.replace(tmp, out / "log.csv")
