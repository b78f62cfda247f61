"""Device safety without a GPU: every registered target (forward + backward), attack (a few
steps through the harness), inference defence and training recipe (one fine-tuning step and its
held-out evaluation), a clean-training step, a DiffPure denoiser step and an engine cell run
with the model on an accelerator, so a tensor made on the wrong device (``torch.zeros(n)``
without ``device=`` inside an attack, a generator left on the CPU, a constant that is not a
buffer, a batch never moved) fails here, not on the first GPU run. The parametrisations are read
from the registries: a new plugin is covered with no edit here.

Why an emulated accelerator and not ``FakeTensorMode`` on a fake CUDA device. On this CPU-only
torch build, ``torch._subclasses.fake_tensor.FakeTensorMode`` makes fake CUDA tensors and raises
``FakeTensorDeviceMismatchError`` for an op mixing them with CPU tensors
(:func:`test_fake_cuda_tensors_catch_cross_device_ops`), but it cannot carry robench's code:

* autograd aborts the process: recording a graph on a CUDA tensor asks c10 for the CUDA device
  guard (``InputMetadata`` → ``getDeviceGuardImpl``: "PyTorch is not linked with support for
  cuda devices"), a C++ ``terminate``, not a Python exception — so no backward, no attack;
* fake tensors have no values: ``float(t)``, ``bool(t)``, ``.item()`` raise
  ``DataDependentOutputException``, and the input validation, the harness's budget check and every
  attack's best-iterate bookkeeping read values;
* ``x.new_tensor([...])`` / ``torch.tensor(data, device="cuda")`` (SSIM's luminance weights),
  ``Tensor.uniform_`` (``nn.Conv2d(..., device="cuda")``'s initialisation), integer indexing inside
  ``nn.MultiheadAttention`` and ``Tensor.to("cuda")`` of a real tensor all reach the real CUDA
  backend and fail with the same "not linked" error.

So the device here is an *emulated accelerator*: :class:`OnDevice`, a tensor subclass holding
real CPU values that reports the ``meta`` device (which has a device guard, so autograd works),
and :class:`EmulatedAccelerator`, a dispatch mode that routes factory calls with that device to
the CPU and checks every op as CUDA does — all tensor arguments on one device, except 0-dim CPU
tensors (CUDA's CPU scalars), CPU index tensors of an indexing op, and copies across devices
(``copy_``, ``.to``); a CPU ``torch.Generator`` for a tensor made on the accelerator fails as on
CUDA; ``.numpy()`` of an accelerator tensor fails as on CUDA. Values are computed on the CPU in
the same order, so each test also checks that the accelerator run gives the CPU run's numbers
exactly (same random draws: robench draws its random numbers on the CPU and moves them).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from robench.core.errors import RobenchError
from robench.core.registry import (
    ATTACKS,
    DATASETS,
    DEFENSES,
    MODELS,
    default_dataset,
    default_of,
)
from robench.defenses.wrappers import Defended, InferenceDefense
from robench.models import build
from tests.conftest import attack_test_params, prepare_defence

EPS = 4 / 255
SIZE = 32
#: the emulated accelerator's device type (see the module docstring)
ACCEL = torch.device("meta")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These passes are tiny (one or two 32-px images): one torch thread. Two OpenMP threads
    spinning against a busy second core made this module 15× slower (6 min instead of 25 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# the emulated accelerator

#: ops that take tensors on different devices on CUDA too
_CROSS_DEVICE = {
    "copy_",
    "_to_copy",
    "_copy_from",
    "_copy_from_and_resize",
    "to",
    "copy",
    "lift_fresh",
    "lift_fresh_copy",
    "detach",
    "alias",
    "_has_compatible_shallow_copy_type",
}
_INDEX_DTYPES = (torch.long, torch.int, torch.bool, torch.uint8)


class DeviceMismatch(RuntimeError):
    """What CUDA raises for the same op: tensors on two devices, a CPU generator for an
    accelerator tensor."""


class OnDevice(torch.Tensor):
    """Real CPU values (``inner``) on the emulated accelerator."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(
            cls,
            inner.size(),
            strides=inner.stride(),
            storage_offset=inner.storage_offset(),
            dtype=inner.dtype,
            layout=inner.layout,
            device=ACCEL,
            requires_grad=inner.requires_grad,
        )
        r.inner = inner
        return r

    def __repr__(self, *, tensor_contents=None) -> str:
        return f"OnDevice({self.inner!r})"

    def tolist(self):  # CUDA tensors have .tolist() (a copy to the host)
        return self.inner.tolist()

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert an accelerator tensor to numpy: use Tensor.cpu() first (as on CUDA)")

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _dispatch(func, args, kwargs):
    name = func.overloadpacket.__name__
    flat, _ = tree_flatten((args, kwargs))
    tensors = [a for a in flat if isinstance(a, torch.Tensor)]
    on = any(isinstance(a, OnDevice) for a in tensors)
    # 0-dim CPU tensors mix with CUDA tensors (CPU scalars), as on CUDA
    cpu = [a for a in tensors if not isinstance(a, OnDevice) and not (a.device.type == "cpu" and a.dim() == 0)]
    if on and cpu and name not in _CROSS_DEVICE:
        if not (name.startswith("index") and all(a.dtype in _INDEX_DTYPES for a in cpu)):  # CPU indices: fine
            raise DeviceMismatch(
                f"{func}: accelerator tensors mixed with CPU tensors of shapes "
                f"{[tuple(a.shape) for a in cpu]} (CUDA: 'Expected all tensors to be on the same "
                f"device')"
            )
    dev = kwargs.get("device")
    dev = None if dev is None else torch.device(dev)
    if dev is not None and dev.type == ACCEL.type:
        g = kwargs.get("generator")
        if g is not None and g.device.type == "cpu":
            raise DeviceMismatch(
                f"{func}: a CPU torch.Generator for a tensor made on the accelerator (CUDA: "
                f"'Expected a 'cuda' device type for generator')"
            )
        kwargs = {**kwargs, "device": torch.device("cpu")}
        out_on = True
    else:
        out_on = on if dev is None else False
    wrapper_of: dict[int, OnDevice] = {}

    def unwrap(a):
        if isinstance(a, OnDevice):
            wrapper_of[id(a.inner)] = a
            return a.inner
        return a

    out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))

    def wrap(t):
        if isinstance(t, torch.Tensor) and not isinstance(t, OnDevice):
            if id(t) in wrapper_of:  # an in-place op returns its (wrapped) self
                return wrapper_of[id(t)]
            if out_on:
                return OnDevice(t)
        return t

    return tree_map(wrap, out)


class EmulatedAccelerator(TorchDispatchMode):
    """While active, ``device=ACCEL`` makes :class:`OnDevice` tensors and ``module.to(ACCEL)``
    moves a module there; every op is checked as CUDA checks it."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})

    # ``torch.tensor(data, device=...)`` and ``x.new_tensor(data)`` build their tensor below the
    # dispatcher (they would make a real, empty ``meta`` tensor): built on the CPU, then moved
    def __enter__(self):
        originals = {"tensor": torch.tensor, "as_tensor": torch.as_tensor, "new_tensor": torch.Tensor.new_tensor}
        self._originals = originals

        def make(fn, data, dev, kwargs):
            dev = None if dev is None else torch.device(dev)
            if dev is not None and dev.type == ACCEL.type:
                return fn(data, **kwargs).to(ACCEL)
            return fn(data, **kwargs, **({"device": dev} if dev is not None else {}))

        torch.tensor = lambda data, *, device=None, **kw: make(originals["tensor"], data, device, kw)
        torch.as_tensor = lambda data, dtype=None, device=None: make(
            originals["as_tensor"], data, device, {"dtype": dtype}
        )
        torch.Tensor.new_tensor = lambda self, data, *, dtype=None, device=None, requires_grad=False: make(
            originals["tensor"],
            data,
            device or self.device,
            {"dtype": dtype or self.dtype, "requires_grad": requires_grad},
        )
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            torch.tensor, torch.as_tensor = self._originals["tensor"], self._originals["as_tensor"]
            torch.Tensor.new_tensor = self._originals["new_tensor"]


def on_accel(t):
    """``t`` (a tensor, or a structure of them) on the emulated accelerator."""
    return tree_map(lambda x: x.to(ACCEL) if isinstance(x, torch.Tensor) else x, t)


def host(t):
    """Back on the CPU, detached (for comparing with the CPU run)."""
    return tree_map(lambda x: x.detach().cpu() if isinstance(x, torch.Tensor) else x, t)


def assert_on_accel(t, what: str) -> None:
    assert isinstance(t, OnDevice) and t.device == ACCEL, f"{what} is on {t.device}, not on the target's device"


def test_the_emulator_catches_what_cuda_refuses():
    """The premise of this file: without it every test below would pass vacuously."""
    with EmulatedAccelerator():
        x = torch.rand(2, 3, device=ACCEL)
        assert_on_accel(x, "a tensor made with device=")
        with pytest.raises(DeviceMismatch):
            x + torch.zeros(3)  # torch.zeros(n) without device=
        with pytest.raises(DeviceMismatch):
            torch.rand(3, generator=torch.Generator().manual_seed(0), device=x.device)
        with pytest.raises(DeviceMismatch):
            torch.zeros(2)[torch.arange(1, device=x.device)]  # a CPU tensor indexed by accelerator indices
        with pytest.raises(TypeError):
            x.numpy()
        # what CUDA allows: CPU scalars, CPU index tensors, copies both ways, values on the host
        y = x * torch.tensor(2.0)
        assert_on_accel(y[torch.arange(1)], "an accelerator tensor indexed by CPU indices")
        back = torch.empty(2, 3)
        back[:] = y
        assert torch.equal(back, y.cpu()) and float(y.sum()) == float(back.sum()) and y.tolist() == back.tolist()
        conv = torch.nn.Conv2d(3, 4, 3).to(ACCEL)
        assert_on_accel(conv.weight, "a moved module's weight")
        img = torch.rand(1, 3, 8, 8, device=ACCEL).requires_grad_(True)
        (g,) = torch.autograd.grad(conv(img).sum(), img)
        assert_on_accel(g, "a gradient")


def test_fake_cuda_tensors_catch_cross_device_ops():
    """What FakeTensorMode does on this build (the module docstring says what it cannot)."""
    from torch._subclasses.fake_tensor import (
        FakeTensorDeviceMismatchError,
        FakeTensorMode,
    )

    with FakeTensorMode(allow_non_fake_inputs=False):
        x = torch.empty(2, 3, device="cuda")
        assert x.device.type == "cuda"
        assert (x + torch.ones(2, 3, device="cuda")).device.type == "cuda"
        with pytest.raises(FakeTensorDeviceMismatchError):
            x + torch.zeros(2, 3)


# --------------------------------------------------------------------------------------------
# targets


def _pair(n: int = 2, size: int = SIZE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(n, 3, size, size, generator=g)
    dist = (0.7 * ref + 0.3 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
    return dist, ref


def _target(name: str):
    opts = dict(getattr(MODELS.get(name), "test_options", {}) or {})
    torch.manual_seed(0)
    return build(name, **opts).eval()  # random init: no weights needed


def _target_pass(t, dist, ref):
    """Scores through ``Target.forward`` and the calibration (``predict_mos``), and ∂q/∂dist both
    that way and through the cached reference branch (``bind``: ``reference`` + ``score_with``,
    what attacks differentiate)."""
    x = dist.clone().requires_grad_(t.differentiable)
    with torch.set_grad_enabled(t.differentiable):
        s = t(x, ref)
        m = t.calibration(t.orient(s))
    out = {"score": s.detach(), "mos": m.detach()}
    if t.differentiable:
        (out["grad"],) = torch.autograd.grad(m.sum(), x)
        x = dist.clone().requires_grad_(True)
        (out["grad_bound"],) = torch.autograd.grad(t.bind(ref)(x).sum(), x)
    return out


@pytest.mark.parametrize("name", MODELS.names())
def test_target_on_accelerator(name):
    """Forward and backward on the accelerator; the numbers match the CPU's (to float rounding:
    under a tensor subclass some composite ops, e.g. attention, take their decomposed path)."""
    t = _target(name)
    dist, ref = _pair(n=1, size=max(SIZE, t.card.min_size))
    want = _target_pass(t, dist, ref)
    with EmulatedAccelerator():
        t = t.to(ACCEL)
        assert t.device == ACCEL, "Target.device must follow the module"
        got = _target_pass(t, on_accel(dist), on_accel(ref))
        for k, v in got.items():
            assert_on_accel(v, f"{name}'s {k}")
        got = host(got)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(
            got[k], want[k], msg=lambda m: f"{k} differs between the CPU and the accelerator: {m}"
        )


# --------------------------------------------------------------------------------------------
# attacks


def _attack(name: str):
    cls = ATTACKS.get(name)
    params = attack_test_params(name)
    return cls(seed=0, **params)


def _result(res):
    return {k: getattr(res, k) for k in ("clean_scores", "scores", "queries", "linf", "l2", "images", "psnr", "ssim")}


def _strict(t):
    """``t`` refusing images that are not on its own device. SSIM has no weights in its score: it
    would compute on whatever device it is given, so an attack that never moved its images (a
    generator's training batches, say) would pass unnoticed; a model with weights fails there."""
    base = type(t)

    def check(self, x):
        if x.device != self.device:
            raise DeviceMismatch(f"{self.card.name} on {self.device} got images on {x.device}")

    def score(self, dist, ref):
        check(self, dist), check(self, ref)
        return base.score(self, dist, ref)

    def score_with(self, dist, prepared):
        check(self, dist)
        return base.score_with(self, dist, prepared)

    t.__class__ = type(f"Strict{base.__name__}", (base,), {"score": score, "score_with": score_with})
    return t


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_on_accelerator(name, tiny_mini, tmp_path, monkeypatch):
    """The harness gets CPU images (as the engine's items are) and a target on the accelerator:
    it moves each batch there, the attack keeps every tensor there, and the result (on the CPU)
    is the CPU run's, bit for bit."""
    t = _strict(_target("ssim"))
    dist, ref = _pair(size=SIZE, seed=1)
    want = _result(_attack(name)(copy.deepcopy(t), dist, ref, eps=[EPS, 2 * EPS]))
    # a generator-training attack (FACPA) trains again on the accelerator, not from the CPU run's cache
    monkeypatch.setenv("ROBENCH_HOME", str(tmp_path))
    with EmulatedAccelerator():
        res = _attack(name)(t.to(ACCEL), dist, ref, eps=[EPS, 2 * EPS])
    got = _result(res)
    for k, v in want.items():
        assert got[k].device.type == "cpu", f"AttackResult.{k} must come back on the CPU"
        assert torch.equal(got[k], v) if k != "psnr" else torch.equal(got[k].nan_to_num(), v.nan_to_num()), (
            f"{k} differs between the CPU and the accelerator"
        )


# --------------------------------------------------------------------------------------------
# inference defences


INFERENCE = [n for n in DEFENSES.names() if getattr(DEFENSES.get(n), "kind", None) == "inference"]


def _defended_pass(t, dist, ref):
    torch.manual_seed(0)  # randomised defences draw the same transforms in both runs
    with torch.no_grad():
        s = t(dist, ref)
    f = t.bind(ref)
    x = dist.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x).sum(), x)
    return {"score": s, "grad": g}


@pytest.mark.parametrize("name", INFERENCE)
def test_inference_defence_on_accelerator(name, defence_home, monkeypatch, request):
    monkeypatch.setenv("ROBENCH_HOME", str(defence_home))
    prepare_defence(name, request)
    cls = DEFENSES.get(name)
    assert issubclass(cls, InferenceDefense)
    try:
        d = cls(**dict(cls.test_options))
    except RobenchError as exc:
        pytest.skip(f"defence {name!r} cannot be built here: {exc}")
    t = Defended(_target("ssim"), [d])
    dist, ref = _pair(size=SIZE)
    try:
        want = host(_defended_pass(copy.deepcopy(t), dist, ref))
    except RobenchError as exc:
        if "is not installed; install it with" in str(exc):
            pytest.skip(f"defence {name!r} needs an optional package: {exc}")
        raise
    with EmulatedAccelerator():
        t = t.to(ACCEL)
        got = _defended_pass(t, on_accel(dist), on_accel(ref))
        assert_on_accel(got["score"], f"the score behind {name}")
        assert_on_accel(got["grad"], f"the gradient through {name}")
        got = host(got)
    assert torch.equal(got["score"], want["score"]) and torch.equal(got["grad"], want["grad"])


# --------------------------------------------------------------------------------------------
# training


def test_training_step_on_accelerator(tiny_mini, tmp_path):
    """One optimiser step of clean training (the Trainer's step: batch to the module's device,
    loss, backward, clip, Adam) of the default target, then its validation pass: the same
    weights as on the CPU."""
    from robench.core.profiles import get_profile
    from robench.engine.train import CleanTask, evaluate
    from robench.core.training import Trainer

    name = default_of(MODELS)
    ds = DATASETS.get(default_dataset())
    opts = dict(ds.test_options)
    train_set, val_set = ds(split="train", **opts), ds(split="val", **opts)
    val_set = val_set.subset(list(range(8)))  # the validation pass, not the whole split
    prof = get_profile("quick")

    def one_step(target, out):
        task = CleanTask(
            target,
            train_set,
            val_set,
            prof,
            base=name,
            dataset=default_dataset(),
            batch_size=4,
            steps_per_epoch=1,
            epochs=1,
            seed=0,
            config={},
            run_cfg={},
            out=out,
        )
        trainer = Trainer(task, out, "h", 1, 1e-3, schedule="warmup-cosine", warmup=1, clip_grad=1.0, progress=False)
        trainer._one_step()  # the step alone: checkpoints (torch.save) are not the device's business
        return {
            "state": dict(target.state_dict()),
            "loss": trainer.rows[0]["loss"],
            "val": evaluate(target, val_set, batch_size=4),
        }

    t = _target(name)
    want = one_step(copy.deepcopy(t), tmp_path / "cpu")
    with EmulatedAccelerator():
        t = t.to(ACCEL)
        got = one_step(t, tmp_path / "accel")
        for k, v in got["state"].items():
            assert_on_accel(v, f"{name}'s {k} after a step")
        got["state"] = host(got["state"])
    assert got["loss"] == want["loss"] and got["val"] == want["val"]
    for k, v in want["state"].items():
        assert torch.equal(got["state"][k], v), k


# --------------------------------------------------------------------------------------------
# the engine: a cell on the accelerator, the device in every record and never in a key


def test_a_cell_on_accelerator(tiny_mini):
    """``run_cell`` as the engine calls it: items on the CPU, the target on the accelerator (the
    convergence re-run at half budget included); the record is the CPU run's."""
    from robench.engine.cell import run_cell
    from robench.engine.items import load_items

    ds = default_dataset()
    items = load_items(ds, "test", 4, 0, dict(DATASETS.get(ds).test_options))
    t = _strict(_target("ssim"))
    atk = lambda: ATTACKS.get("pgd")(seed=0, steps=2)  # noqa: E731
    want, want_rows = run_cell(copy.deepcopy(t), atk(), items, [2.0, 4.0], batch_size=2)
    with EmulatedAccelerator():
        got, rows = run_cell(t.to(ACCEL), atk(), items, [2.0, 4.0], batch_size=2)
    assert got["summary"] == want["summary"] and got["flags"] == want["flags"] and rows == want_rows


def test_device_is_recorded_and_not_keyed(tiny_mini, tmp_path):
    import robench
    from robench.engine.store import Store

    store = tmp_path / "s.sqlite"
    settings = dict(
        model="ssim",
        attacks="fgsm",
        n=2,
        eps="4",
        store=str(store),
        dataset_options=dict(DATASETS.get(default_dataset()).test_options),
    )
    first = robench.run(progress=False, device="cpu", **settings)["runs"][0]["cells"]
    again = robench.run(progress=False, device="auto", **settings)["runs"][0]["cells"]  # auto is the CPU here
    assert [c["key"] for c in first] == [c["key"] for c in again] and again[0]["status"] == "cached"
    with Store(store) as st:
        cells = st.cells()
    assert cells.iloc[0]["device"] == {"device": "cpu"}
    assert "device" not in json_dumps(cells.iloc[0]["config"]), "the device must not be part of the cell config"


def json_dumps(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


# --------------------------------------------------------------------------------------------
# --device: one function resolves and checks it


def test_resolve_device_on_this_machine(monkeypatch):
    from robench.core.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == resolve_device(None) == resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    for spec in ("cuda", "cuda:0", "cuda:7"):
        with pytest.raises(
            RobenchError,
            match=rf"^--device {spec}: CUDA is not available on this machine \(.*\); "
            r"use --device cpu or --device auto$",
        ):
            resolve_device(spec)
    for bad in ("gpu", "cuda:x", "cpu:1", "auto:0", "mps", ""):
        with pytest.raises(RobenchError, match="must be auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


def test_resolve_device_with_two_gpus(monkeypatch):
    """The machine's answers faked: two GPUs, the current one 1."""
    from robench.core.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(RobenchError, match=r"^--device cuda:7: this machine has 2 CUDA devices \(cuda:0, cuda:1\); "):
        resolve_device("cuda:7")


def test_cli_device_errors_are_one_line_exit_2(monkeypatch):
    from typer.testing import CliRunner

    from robench.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runner = CliRunner()
    for args in (
        ["run", "--model", "ssim", "--device", "cuda"],
        ["validate", "--device", "cuda"],
        ["train", "--model", "birqa", "--device", "cuda:7"],
        ["eval", "--model", "ssim", "--device", "cuda"],
        ["bench", "speed", "--device", "cuda"],
        ["run", "--model", "ssim", "--device", "gpu"],
    ):
        r = runner.invoke(app, args)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: --device"), (args, r.output)
        assert "Traceback" not in r.output and isinstance(r.exception, SystemExit), (args, r.exception)
    r = runner.invoke(app, ["run", "--help"])
    assert r.exit_code == 0 and "--device" in r.output and "cuda:N" in r.output


RECIPES = [n for n in DEFENSES.names() if getattr(DEFENSES.get(n), "kind", None) == "training"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_step_on_accelerator(name, tiny_mini, tmp_path):
    """One fine-tuning step of each training recipe (inner PGD on the accelerator, the recipe's
    labels and loss, Adam) and its held-out evaluation (the stopping rule's batches, moved like a
    step's): the same weights and losses as on the CPU."""
    import dataclasses

    from robench.core.profiles import get_profile
    from robench.core.training import Trainer

    ds = DATASETS.get(default_dataset())
    opts = dict(ds.test_options)
    data, val = ds(split="train", **opts), ds(split="val", **opts)
    # small: a batch of 16 (AAT's 8 anchors + 8 attacked), 2 inner PGD steps, one held-out batch
    prof = dataclasses.replace(
        get_profile("quick"), train_batch=16, adv_pgd_steps=2, adv_eval_batches=1, train_crop=None
    )
    base = default_of(MODELS)

    def one_step(target, out):
        task = DEFENSES.get(name)(target, data, prof, 0, base, heldout=val)
        trainer = Trainer(task, out, "h", 1, prof.adv_lr, clip_grad=prof.train_clip_grad, progress=False)
        trainer._one_step()
        held, _ = task.heldout_loss()
        return {"state": dict(target.state_dict()), "loss": trainer.rows[0]["loss"], "heldout": held}

    t = _target(base)
    want = one_step(copy.deepcopy(t), tmp_path / "cpu")
    with EmulatedAccelerator():
        got = one_step(t.to(ACCEL), tmp_path / "accel")
        for k, v in got["state"].items():
            assert_on_accel(v, f"{base}'s {k} after a {name} step")
        got["state"] = host(got["state"])
    torch.testing.assert_close(got["loss"], want["loss"])
    torch.testing.assert_close(got["heldout"], want["heldout"])
    for k, v in want["state"].items():
        torch.testing.assert_close(got["state"][k], v, msg=lambda m: f"{k}: {m}")


def test_denoiser_step_on_accelerator(tmp_path):
    """One step of DiffPure's DDPM training (``robench train --defense diffpure``)."""
    from robench.defenses.diffpure import TinyUNet, _DDPMTask
    from robench.core.training import Trainer

    refs = _pair(n=4)[1]

    def one_step(net, out):
        task = _DDPMTask(net, refs, batch=2, crop=16, seed=0, dataset="mini", log_extra={})
        trainer = Trainer(task, out, "h", 1, 2e-4, progress=False)
        trainer._one_step()
        return {"state": dict(net.state_dict()), "loss": trainer.rows[0]["loss"]}

    torch.manual_seed(0)
    net = TinyUNet(8)
    want = one_step(copy.deepcopy(net), tmp_path / "cpu")
    with EmulatedAccelerator():
        got = one_step(net.to(ACCEL), tmp_path / "accel")
        got["state"] = host(got["state"])
    torch.testing.assert_close(got["loss"], want["loss"])
    for k, v in want["state"].items():
        torch.testing.assert_close(got["state"][k], v, msg=lambda m: f"{k}: {m}")
