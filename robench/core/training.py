"""One training loop for clean training, the adversarial recipes and the DiffPure DDPM.

A run hands the :class:`Trainer` a small :class:`TrainTask` that says only what differs — the
module, each step's batch, the loss and its log entries, an optional evaluation at every
checkpoint, what else the checkpoint holds and how the run's log files look. The Trainer owns
the rest: Adam, the lr schedule, gradient clipping, the per-step RNG, the loss EMA, the progress
bar, and the atomic ``last.pt`` that a rerun of the same configuration resumes from.

A task may also stop a run before its step cap: :meth:`TrainTask.observe` sees the
Trainer before the first step and after every step (the recipes evaluate a held-out batch there
and feed a :class:`PatienceStop`), and :meth:`TrainTask.should_stop` ends the run; the Trainer then
checkpoints at once, so the stopping state a rerun resumes is the one the decision was made in.

Nothing here imports a plugin (defences, recipes): they import this module, never the reverse.
It sits in core, under the plugins, because plugins that train (the recipes' tasks, DiffPure's
denoiser) run it and a plugin imports nothing above core; what drives a recipe's fine-tune (the
clean model, calibration, provenance) is the engine's (engine/finetune.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robench.core.device import to_device
from robench.core.errors import RobenchError
from robench.core.progress import progress_bar
from robench.core.faults import fault

#: marks the Trainer's ``last.pt`` layout; checkpoints without it predate the Trainer and go
#: through :meth:`TrainTask.upgrade_checkpoint`
CHECKPOINT_FORMAT = "robench-trainer-v1"
#: the loss EMA in the logs and the bar has the span of the paper's Fig. 5 curve (α = 2/21)
EMA_SPAN = 20
_TRAINER_KEYS = ("format", "model", "optim", "step", "elapsed", "cfg_hash", "rows")


# --------------------------------------------------------------------------------------------
# helpers shared by every training loop (and FACPA's generator)


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


def optimizer_step(loss: torch.Tensor, opt, params, target, clip_grad: float | None) -> None:
    """Backward, optional gradient-norm clipping, step, then the module's constraints
    (``post_step``: LPIPS keeps its lin weights non-negative)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    opt.step()
    post = getattr(target, "post_step", None)
    if post is not None:
        post()


def config_hash(cfg: dict[str, Any], exclude: tuple[str, ...] = ()) -> str:
    """What identifies a run (the keys in ``exclude`` — its length — may change: a rerun extends it)."""
    kept = {k: v for k, v in cfg.items() if k not in exclude}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_torch_save(obj: Any, path: Path) -> None:
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


def load_checkpoint(path: Path, cfg_hash: str) -> dict[str, Any] | None:
    """``path`` (a ``last.pt``) when it exists and belongs to the configuration ``cfg_hash``.
    Another configuration in the same folder is refused: resuming it would mix two runs."""
    if not path.is_file():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise RobenchError(f"{path} cannot be read ({exc}); delete it to restart this run from step 0") from None
    if ck.get("cfg_hash") != cfg_hash:
        raise RobenchError(
            f"{path} holds a training run with a different configuration (config hash "
            f"{ck.get('cfg_hash')}, this run {cfg_hash}): delete {path.parent} to start over, "
            f"or pass another --out"
        )
    return ck


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, default=str))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# the task: what differs between trainings


class TrainTask:
    """What one kind of training supplies. Subclasses set ``module`` and ``seed`` and implement
    :meth:`make_batch` and :meth:`loss`; every other hook has a default."""

    module: nn.Module
    seed: int = 0
    #: progress-bar title
    title: str = "training"

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    @property
    def device(self) -> torch.device:
        """Where the module trains: the Trainer moves each batch here (batches are made on the
        CPU, their random draws from CPU generators, so a run's batches are the same on any device)."""
        from robench.core.device import module_device

        return module_device(self.module)

    def rng_seed(self, step: int) -> int:
        return self.seed * 1_000_003 + step

    def generator(self, step: int) -> torch.Generator:
        """Step ``step``'s randomness, from (seed, step) alone: a resumed run redoes a step exactly.
        The global RNG is seeded too (dropout draws from it)."""
        s = self.rng_seed(step)
        torch.manual_seed(s)
        return torch.Generator().manual_seed(s)

    def make_batch(self, step: int, gen: torch.Generator) -> Any:
        raise NotImplementedError

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss to minimise and the entries this step adds to its log row."""
        raise NotImplementedError

    def evaluate(self, trainer: "Trainer") -> None:
        """Called at every checkpoint, before it is written (model selection, end-of-epoch rows)."""

    def state(self) -> dict[str, Any]:
        """What else ``last.pt`` holds (top-level keys beside the Trainer's)."""
        return {}

    def load_state(self, ck: dict[str, Any]) -> None:
        """Restore :meth:`state` from a checkpoint being resumed."""

    def upgrade_checkpoint(self, ck: dict[str, Any], out: Path) -> dict[str, Any]:
        """A ``last.pt`` written before the Trainer, in the Trainer's layout (``step``, ``elapsed``,
        ``rows``); the default reads the recipes' old layout, which already had them."""
        if "step" not in ck:
            raise RobenchError(
                f"{out / 'last.pt'} is not a checkpoint this version can resume; delete {out} "
                f"to start over, or pass another --out"
            )
        return ck

    def write_log(self, out: Path, rows: list[dict[str, Any]]) -> None:
        """Write the run's log files from the per-step ``rows`` (after every checkpoint)."""

    def observe(self, trainer: "Trainer") -> None:
        """Called before the first step (also of a resumed run) and after every optimiser step,
        before the checkpoint decision; an early-stopping monitor looks at the run here. It must be
        idempotent for a step it has already seen (a resumed run calls it again at its step)."""

    def should_stop(self, trainer: "Trainer") -> bool:
        """True ends the run before ``total_steps`` (checked before every step and after
        :meth:`observe`; a run that stops is checkpointed at once, and a rerun trains nothing)."""
        return False

    def fault_point(self, done: int) -> str:
        """The crash tests' name for the checkpoint after ``done`` steps."""
        return f"{self.title}:{done}"

    def describe(self, step: int) -> str:
        return self.title


class _Clock:
    """Training seconds: running except while checkpoints and logs are written."""

    def __init__(self, elapsed: float = 0.0):
        self.elapsed, self._since = elapsed, None

    def start(self) -> None:
        self._since = time.perf_counter()

    def pause(self) -> None:
        if self._since is not None:
            self.elapsed += time.perf_counter() - self._since
            self._since = None

    def seconds(self) -> float:
        return self.elapsed + (time.perf_counter() - self._since if self._since is not None else 0.0)


def ema_of(losses: list[float], span: int = EMA_SPAN) -> float | None:
    """The loss EMA after ``losses``, by the same sums :meth:`Trainer.run` makes step by step."""
    a, ema = 2.0 / (span + 1), None
    for v in losses:
        ema = v if ema is None else a * v + (1 - a) * ema
    return ema


class PatienceStop:
    """Early stopping on the EMA of a monitored loss, one :meth:`update` per evaluation.

    The EMA (span ``span``: α = 2/(span+1), seeded by the first value) is compared with the
    *reference*: the EMA at the last evaluation that improved on the reference by more than the
    relative ``min_delta`` (``ema < ref − min_delta·|ref|``; the first evaluation sets it). An
    evaluation that does not is a bad one; ``patience`` bad evaluations in a row settle the run.
    Improvements smaller than ``min_delta`` never move the reference (as Keras' EarlyStopping),
    so a slow steady fall still counts once it adds up to more than ``min_delta``, while noise
    that stays below it does not. ``best`` is the lowest EMA seen (for the log).

    The whole state is :meth:`state_dict`: it goes into ``last.pt`` and a resumed run continues it."""

    def __init__(self, patience: int, min_delta: float, span: int = 3):
        if patience < 1 or min_delta < 0 or span < 1:
            raise ValueError(f"patience ≥ 1, min_delta ≥ 0, span ≥ 1 (got {patience}, {min_delta}, {span})")
        self.patience, self.min_delta, self.span = int(patience), float(min_delta), int(span)
        self.ema: float | None = None
        self.ref: float | None = None  # the EMA of the last significant improvement
        self.ref_step: int | None = None
        self.best: float | None = None  # lowest EMA seen
        self.best_step: int | None = None
        self.bad = 0  # evaluations in a row without a significant improvement
        self.last_step = -1  # step of the last evaluation (updates are idempotent per step)
        self.settled_at: int | None = None

    @property
    def settled(self) -> bool:
        return self.settled_at is not None

    def update(self, value: float, step: int | None = None) -> dict[str, Any]:
        """Feed one evaluation's loss (at optimiser step ``step``; default: the next integer);
        returns what the log keeps of it (``settled``: this evaluation ends the run). Once
        settled, the rule is frozen: a further call raises."""
        if self.settled:
            raise RuntimeError(f"the monitored loss settled at step {self.settled_at}; nothing more to update")
        step = self.last_step + 1 if step is None else int(step)
        value = float(value)
        a = 2.0 / (self.span + 1)
        self.ema = value if self.ema is None else a * value + (1 - a) * self.ema
        improved = self.ref is None or self.ema < self.ref - self.min_delta * abs(self.ref)
        if improved:
            self.ref, self.ref_step, self.bad = self.ema, step, 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                self.settled_at = step
        if self.best is None or self.ema < self.best:
            self.best, self.best_step = self.ema, step
        self.last_step = step
        return {
            "step": step,
            "loss": value,
            "ema": self.ema,
            "ref_ema": self.ref,
            "improved": bool(improved),
            "bad_evals": self.bad,
            "settled": self.settled,
        }

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, st: dict[str, Any]) -> None:
        for k in vars(self):
            if k in st:
                setattr(self, k, st[k])


class Trainer:
    """The loop. ``run()`` trains ``total_steps`` optimiser steps (a cap: the task's
    :meth:`~TrainTask.should_stop` may end the run sooner), checkpointing every
    ``checkpoint_every`` steps, when the task stops it, and at the end; a ``last.pt`` of the same
    ``cfg_hash`` in ``out`` is resumed first, so a rerun of a finished run trains nothing and a
    longer one extends it (one the task stopped stays stopped).

    ``schedule``: ``"constant"`` or ``"warmup-cosine"`` (:func:`lr_factor` over ``total_steps``)."""

    def __init__(
        self,
        task: TrainTask,
        out: Path,
        cfg_hash: str,
        total_steps: int,
        lr: float,
        *,
        schedule: str = "constant",
        warmup: int = 0,
        clip_grad: float | None = None,
        checkpoint_every: int = 10,
        progress: bool = True,
    ):
        if schedule not in ("constant", "warmup-cosine"):
            raise ValueError(f"unknown lr schedule {schedule!r}")
        self.task, self.out, self.cfg_hash = task, Path(out), cfg_hash
        self.total, self.lr, self.schedule, self.warmup = int(total_steps), lr, schedule, warmup
        self.clip_grad, self.every, self.progress = clip_grad, max(1, int(checkpoint_every)), progress
        self.out.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(self.out)
        self.params = task.parameters()
        self.opt = torch.optim.Adam(self.params, lr=lr)
        self.step = 0  # optimiser steps done
        self.rows: list[dict[str, Any]] = []
        self.loss_ema: float | None = None
        self.clock = _Clock()
        self.resumed: bool | None = None  # None until resume() looked
        self._bar = None

    @property
    def last(self) -> Path:
        return self.out / "last.pt"

    def seconds(self) -> float:
        return self.clock.seconds()

    def say(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.console.print(msg, highlight=False)

    def resume(self) -> bool:
        """Load ``last.pt`` when it belongs to this configuration; True when it did."""
        if self.resumed is not None:
            return self.resumed
        ck = load_checkpoint(self.last, self.cfg_hash)
        self.resumed = ck is not None
        if ck is None:
            return False
        if ck.get("format") != CHECKPOINT_FORMAT:
            ck = self.task.upgrade_checkpoint(ck, self.out)
        self.task.module.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optim"])
        self.step = int(ck["step"])
        self.clock = _Clock(float(ck["elapsed"]))
        self.rows = [r for r in ck["rows"] if r["step"] < self.step]
        self.loss_ema = ema_of([float(r["loss"]) for r in self.rows])
        self.task.load_state(ck)
        return True

    def checkpoint(self) -> None:
        extra = self.task.state()
        clash = set(extra) & set(_TRAINER_KEYS)
        if clash:
            raise ValueError(f"task state keys {sorted(clash)} clash with the Trainer's")
        # the log rows travel inside last.pt: a kill between it and the log files loses none
        atomic_torch_save(
            {
                **extra,
                "format": CHECKPOINT_FORMAT,
                "model": self.task.module.state_dict(),
                "optim": self.opt.state_dict(),
                "step": self.step,
                "elapsed": self.clock.elapsed,
                "cfg_hash": self.cfg_hash,
                "rows": self.rows,
            },
            self.last,
        )
        fault(f"kill-after-checkpoint:{self.task.fault_point(self.step)}")
        self.task.write_log(self.out, self.rows)

    def _one_step(self) -> None:
        s, task = self.step, self.task
        gen = task.generator(s)
        batch = to_device(task.make_batch(s, gen), task.device)
        if self.schedule == "warmup-cosine":
            for group in self.opt.param_groups:
                group["lr"] = self.lr * lr_factor(s, self.total, self.warmup)
        loss, log = task.loss(batch)
        optimizer_step(loss, self.opt, self.params, task.module, self.clip_grad)
        value = float(loss.detach())
        self.loss_ema = ema_of([value]) if self.loss_ema is None else ema_of([self.loss_ema, value])
        self.step += 1
        self.rows.append(
            {"step": s, **log, "loss": value, "loss_ema": self.loss_ema, "seconds": round(self.clock.seconds(), 3)}
        )

    def run(self) -> "Trainer":
        self.resume()
        with progress_bar(self.progress) as bar:
            self._bar = bar
            bar_task = (
                bar.add_task(self.task.describe(self.step), total=self.total, completed=min(self.step, self.total))
                if bar
                else None
            )
            try:
                if self.step < self.total:
                    self.clock.start()
                    self.task.observe(self)  # a fresh run's step-0 evaluation (a resumed one has it)
                    self.clock.pause()
                while self.step < self.total and not self.task.should_stop(self):
                    self.clock.start()
                    self._one_step()
                    self.task.observe(self)
                    stop = self.task.should_stop(self)
                    if self.step % self.every == 0 or self.step == self.total or stop:
                        self.task.evaluate(self)
                        self.clock.pause()
                        self.checkpoint()
                    self.clock.pause()
                    if bar:
                        bar.update(
                            bar_task,
                            advance=1,
                            description=f"{self.task.describe(self.step - 1)} · loss {self.loss_ema:.4f}",
                        )
            finally:
                self.clock.pause()
                self._bar = None
        return self


# --------------------------------------------------------------------------------------------
# the clean objective (shared by clean training and the recipes' replay terms)


def plcc_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    p, t = pred - pred.mean(), target - target.mean()
    return 1.0 - (p * t).sum() / (p.norm() * t.norm() + eps)


def clean_loss(pred: torch.Tensor, mos: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Paper eq. 5: MSE + λ(1 − PLCC)."""
    return torch.mean((pred - mos) ** 2) + lam * plcc_loss(pred, mos)
