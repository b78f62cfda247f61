"""Compute profiles: every budget robench uses, in one place, recorded with every result.

``quick`` is the CPU default (small images, reduced budgets); ``paper`` is the paper's settings
where known and robench's documented choices where not (for GPUs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from robench.errors import UnknownNameError


@dataclass(frozen=True)
class Profile:
    name: str
    image_size: int  # size of the built-in mini set
    # clean training (paper eq. 5: MSE + λ(1 − PLCC), Adam)
    train_epochs: int
    train_batch: int
    train_lr: float
    train_crop: int | None  # random crop (same for ref and dist) during training; None = whole image
    train_loss_lambda: float = 1.0
    train_warmup_steps: int = 50  # linear warm-up, then cosine decay to 0 over the run
    train_clip_grad: float | None = 10.0  # guards against spikes (a constant lr 1e-3 run diverged without it)
    eval_batch: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    # quick: BiRQA trains in minutes on 2 CPU cores (README states the measured time and SROCC)
    "quick": Profile(name="quick", image_size=128, train_epochs=8, train_batch=32, train_lr=1e-3, train_crop=64),
    # paper Table 10: Adam (0.9, 0.999), batch 32, 2500 epochs; the learning rate was lost in the
    # text extraction: 1e-4 is robench's choice. Whole images, no crop.
    "paper": Profile(name="paper", image_size=512, train_epochs=2500, train_batch=32, train_lr=1e-4, train_crop=None),
}


def get_profile(name: str | Profile) -> Profile:
    if isinstance(name, Profile):
        return name
    if name not in PROFILES:
        import difflib

        close = difflib.get_close_matches(name, list(PROFILES), n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown profile {name!r};{hint} (known: {', '.join(PROFILES)})")
    return PROFILES[name]
