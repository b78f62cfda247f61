"""The one training loop (issue 16.3): resume reproduces an uninterrupted run, a checkpoint of
another configuration is refused, and the recipes are classes the registry finds, not branches."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from robench.core.errors import RobenchError
from robench.core.training import Trainer, TrainTask, config_hash
from tests.conftest import Interrupt, crash_at


class Regression(TrainTask):
    """A linear model fit to noisy targets: every step draws its batch from the step's generator,
    and dropout draws from the global RNG, so both kinds of randomness must be reproduced."""

    title = "toy"

    def __init__(self, seed: int = 0):
        torch.manual_seed(1)
        self.module = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
        self.seed = seed
        self.w = torch.arange(1.0, 5.0)
        self.evaluated: list[int] = []

    def make_batch(self, step, gen):
        x = torch.randn(16, 4, generator=gen)
        return x, x @ self.w + 0.1 * torch.randn(16, generator=gen)

    def loss(self, batch):
        x, y = batch
        self.module.train()
        pred = self.module(x).squeeze(1)
        return torch.mean((pred - y) ** 2), {"max_err": float((pred.detach() - y).abs().max())}

    def evaluate(self, trainer):
        self.evaluated.append(trainer.step)

    def state(self):
        return {"evaluated": list(self.evaluated)}

    def load_state(self, ck):
        self.evaluated = list(ck["evaluated"])

    def write_log(self, out, rows):
        (out / "steps.json").write_text(json.dumps({"steps": rows}))


def _trainer(out: Path, steps: int, cfg: dict | None = None) -> tuple[Trainer, Regression]:
    task = Regression()
    cfg = cfg or {"task": "toy", "lr": 1e-2}
    return Trainer(
        task,
        out,
        config_hash(cfg),
        steps,
        1e-2,
        schedule="warmup-cosine",
        warmup=2,
        clip_grad=1.0,
        checkpoint_every=3,
        progress=False,
    ), task


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path):
    full, full_task = _trainer(tmp_path / "full", 10)
    full.run()

    part, task = _trainer(tmp_path / "part", 10)
    crash_at(task, 7)  # a crash after the checkpoint at step 6, mid-way to the next
    with pytest.raises(Interrupt):
        part.run()
    assert torch.load(tmp_path / "part" / "last.pt", weights_only=True)["step"] == 6

    again, again_task = _trainer(tmp_path / "part", 10)
    assert again.resume() and again.step == 6
    torch.manual_seed(12345)  # the caller's global RNG state must not matter: each step seeds it
    again.run()
    assert again.step == 10 and [r["step"] for r in again.rows] == list(range(10))
    assert _strip(again.rows) == _strip(full.rows)  # same batches, same dropout, same loss EMA
    assert again_task.evaluated == full_task.evaluated == [3, 6, 9, 10]
    a, b = full_task.module.state_dict(), again_task.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = json.loads((tmp_path / "part" / "steps.json").read_text())["steps"]
    assert _strip(log) == _strip(full.rows) and all("loss_ema" in r for r in log)

    # a rerun of the finished run trains nothing; a longer one extends it
    done, _ = _trainer(tmp_path / "full", 10)
    done.run()
    assert done.step == 10 and _strip(done.rows) == _strip(full.rows)
    longer, _ = _trainer(tmp_path / "full", 12)
    longer.run()
    assert [r["step"] for r in longer.rows] == list(range(12)) and _strip(longer.rows[:10]) == _strip(full.rows)


def test_a_checkpoint_of_another_configuration_is_refused_naming_the_file(tmp_path):
    out = tmp_path / "run"
    _trainer(out, 3)[0].run()
    other, _ = _trainer(out, 3, {"task": "toy", "lr": 5e-3})
    with pytest.raises(RobenchError, match="different configuration") as e:
        other.run()
    msg = str(e.value)
    assert str(out / "last.pt") in msg and "delete" in msg and "--out" in msg


def test_an_unreadable_checkpoint_is_refused_with_the_fix(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RobenchError, match="delete it"):
        _trainer(out, 3)[0].run()


# --------------------------------------------------------------------------------------------
# the recipes are classes


def _recipe_classes():
    from robench.core.registry import DEFENSES
    from robench.defenses.recipes import TrainingRecipe

    out = {}
    for name in DEFENSES.names():
        cls = DEFENSES.get(name)
        if isinstance(cls, type) and issubclass(cls, TrainingRecipe):
            out[name] = cls
    return out


def test_every_registered_recipe_implements_the_recipe_methods_and_declares_its_table_place():
    from robench.core.registry import training_recipes
    from robench.defenses.recipes import TrainingRecipe

    recipes = _recipe_classes()
    assert {"r", "at", "aat"} <= set(recipes)
    for name, cls in recipes.items():
        assert cls.name == name and cls.kind == "training" and cls.needs_clean_weights is True
        assert isinstance(cls.label, str) and cls.label and isinstance(cls.order, int)
        assert cls.objective is not TrainingRecipe.objective, f"{name} does not implement objective"
        for hook in ("select", "provenance_extra", "make_batch", "loss", "final_provenance"):
            assert callable(getattr(cls, hook))
        assert cls.registry_meta()["kind"] == "training"
        for other in cls.compare_with:
            assert other in recipes
    assert [recipes[n].label for n in ("r", "at", "aat")] == ["R", "AT", "AAT"]
    assert list(training_recipes())[:3] == ["r", "at", "aat"]  # table order from the declared ``order``
    assert len({c.order for c in recipes.values()}) == len(recipes)


def name_comparisons(source: str, names: set[str]) -> list[tuple[int, str]]:
    """``Compare`` nodes (``==``, ``in``, …) with one of ``names`` as a string constant."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for c in [node.left, *node.comparators]:
                hits += [
                    (node.lineno, x.value) for x in ast.walk(c) if isinstance(x, ast.Constant) and x.value in names
                ]
    return hits


def test_the_comparison_check_catches_a_planted_branch():
    src = 'def f(recipe):\n    if recipe == "aat":\n        return 1\n    return recipe in ("r", "at") or "r"\n'
    assert sorted(v for _, v in name_comparisons(src, {"r", "at", "aat"})) == ["aat", "at", "r"]


def test_recipes_module_compares_no_recipe_name():
    from robench.defenses import recipes as mod

    bad = name_comparisons(inspect.getsource(mod), set(_recipe_classes()))
    assert not bad, f"recipes.py branches on recipe names (line, name): {bad}"
