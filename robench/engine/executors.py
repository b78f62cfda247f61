"""Executors: who computes the cells of a grid. The driver (``runner.run_grid``) plans every
cell, trains what is missing, and alone writes the store; an executor only computes.

* ``serial`` (default): in this process, with the driver's already-loaded target and items.
* ``ray``: each cell is a Ray task. Workers receive the cell's *description* (run spec, attack
  name and resolved parameters, ε, the cache path) — never a model — rebuild target, items and
  attack from the cache, check that they describe the same cell (same key), compute it and
  return its record and rows. Ray retries a task whose worker died; the driver commits each
  returned cell in one transaction, so ordering, retries and worker loss cannot corrupt the
  store. GPU cells request ``num_gpus``; CPU cells set torch's threads to their CPU share.
  ``ray.shutdown()`` always runs.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

from robench.core.directions import DEFAULT as DEFAULT_DIRECTION
from robench.core.errors import RobenchError

EXECUTORS = ("serial", "ray")


@dataclass
class CellTask:
    key: str
    spec: dict[str, Any]  # RunSpec fields of one target × defence
    attack: str
    attack_params: dict[str, Any]  # resolved (eot fixed for this target)
    eps: list[float]
    batch_size: int
    n: int | None
    home: str
    threads: int | None = None
    device: str = "cpu"
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    direction: str = DEFAULT_DIRECTION  # core.directions: part of the cell's key


def compute_cell(task: CellTask | dict) -> dict[str, Any]:
    """Worker side: rebuild everything from the description, compute, return record + rows.
    A budget violation comes back as a failed cell (it must never reach the store as data)."""
    import torch

    from robench.core.version import __version__
    from robench.core.device import device_record, resolve_device
    from robench.core.registry import ATTACKS
    from robench.core.config import RunSpec
    from robench.core.target import set_speed
    from robench.engine.cell import cell_config, cell_result
    from robench.engine.items import load_items
    from robench.engine.resolve import resolve_target
    from robench.engine.store import cell_key

    task = CellTask(**task) if isinstance(task, dict) else task
    os.environ["ROBENCH_HOME"] = task.home
    if task.threads:
        torch.set_num_threads(task.threads)
    spec = RunSpec(**task.spec)
    target, defense = _cached(
        ("target", spec.model, spec.defense, spec.train_seed, spec.weights, repr(spec.defense_options)),
        lambda: resolve_target(spec, progress=False, train=False),
    )
    device = resolve_device(task.device, where=f"worker {os.getpid()}: --device")
    target = target.to(device)
    # the speed options as the driver checked them (amp is in the key: a worker that skipped
    # it would compute another cell; the cached target follows each cell's setting)
    set_speed(target, spec.amp, spec.compile)
    items = _cached(
        ("items", spec.dataset, spec.split, task.n, spec.seed, repr(sorted(spec.dataset_options.items()))),
        lambda: load_items(spec.dataset, spec.split, task.n or None, spec.seed, spec.dataset_options),
    )
    attack = ATTACKS.get(task.attack)(profile=spec.profile, seed=spec.seed, **task.attack_params)
    attack.check(target)
    attack.resolve(target)
    key = cell_key(cell_config(target, defense, attack, task.eps, spec, items, task.n, task.direction), __version__)
    if key != task.key:  # a worker with other weights, data or code must not answer for this cell
        raise RobenchError(
            f"worker computed cell {key[:12]} for task {task.key[:12]} ({task.label}): its cache or "
            "code differs from the driver's"
        )
    return {
        **cell_result(
            task.key,
            target,
            attack,
            items,
            task.eps,
            task.batch_size,
            escalate=spec.escalate,
            direction=task.direction,
            keep_images=spec.keep_images,
        ),
        "pid": os.getpid(),
        "device": device_record(device),
    }


_CACHE: dict[tuple, Any] = {}


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
    """Per-process cache: a Ray worker process serves many cells of the same target."""
    if key not in _CACHE:
        if len(_CACHE) > 8:
            _CACHE.clear()
        _CACHE[key] = build()
    return _CACHE[key]


class Executor:
    name = "base"

    def run(
        self, tasks: list[CellTask], local: dict[str, Callable[..., dict]] | None = None
    ) -> Iterator[tuple[CellTask, dict[str, Any] | BaseException]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SerialExecutor(Executor):
    """In-process, in order; the driver passes a local closure per task that reuses its loaded
    target and items (and shows per-item progress)."""

    name = "serial"

    def run(self, tasks, local=None):
        for t in tasks:
            try:
                yield t, (local[t.key]() if local and t.key in local else compute_cell(t))
            except RobenchError as exc:
                yield t, exc


class RayExecutor(Executor):
    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        cpus_per_cell: float = 1,
        gpus_per_cell: float = 0,
        max_retries: int = 2,
    ):
        try:
            import ray
        except ImportError:
            raise RobenchError("the ray executor needs Ray: pip install 'robench[ray]'") from None
        self.ray = ray
        kw: dict[str, Any] = {
            "ignore_reinit_error": True,
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if address:
            kw["address"] = address
        elif num_cpus is not None:
            kw["num_cpus"] = num_cpus
        if not 0 <= gpus_per_cell <= 1:
            # a cell computes on one device, its worker's cuda:0: more would hold GPUs it never uses
            raise RobenchError(
                f"--gpus-per-cell must be in [0, 1] (a cell computes on one GPU; a fraction lets "
                f"cells share one), got {gpus_per_cell:g}"
            )
        ours = not ray.is_initialized()  # a caller's connection (an Executor it passes in) stays its own
        try:
            ray.init(**kw)
        except Exception as exc:  # noqa: BLE001 - Ray raises many types for an unreachable cluster
            raise RobenchError(f"could not start or reach Ray ({address or 'local'}): {exc}") from None
        if gpus_per_cell > 0:
            # Ray would keep a GPU cell pending forever where no node has a GPU: refuse now
            most = max(
                (float(n.get("Resources", {}).get("GPU", 0)) for n in ray.nodes() if n.get("Alive")), default=0.0
            )
            if most < gpus_per_cell:
                if ours:
                    ray.shutdown()
                raise RobenchError(
                    f"--gpus-per-cell {gpus_per_cell:g}: no node of the Ray cluster ({address or 'local'}) "
                    f"has {gpus_per_cell:g} GPU (the most on one node: {most:g}); start the worker nodes "
                    "on GPU machines (`ray start --num-gpus N`) or drop --gpus-per-cell"
                )
        self.cpus, self.gpus, self.retries = cpus_per_cell, gpus_per_cell, max_retries
        self._remote = ray.remote(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=max_retries)(_ray_compute)
        # Ray re-runs a task whose worker or node died without telling the driver; a counter
        # pinned to the driver's node (which outlives any worker node) counts each attempt so a
        # retried cell is recorded as retried
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        # named (unique per run) so a monitor on the driver can see which node runs which cell
        self.attempts_name = f"robench-attempts-{uuid.uuid4().hex[:12]}"
        self._attempts = (
            ray.remote(num_cpus=0)(_Attempts).options(scheduling_strategy=here, name=self.attempts_name).remote()
        )

    def run(self, tasks, local=None):
        ray = self.ray
        pending = {}
        for t in tasks:
            t.threads = t.threads or max(1, int(self.cpus))
            if self.gpus:
                t.device = "cuda"  # the GPU Ray gave the task is its worker's cuda:0
            elif t.device != "cpu":
                raise RobenchError(
                    f"--device {t.device} with the ray executor needs --gpus-per-cell > 0 (Ray "
                    f"hides the GPUs from a task that requests none)"
                )
            pending[self._remote.remote(asdict(t), self._attempts)] = t
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                t = pending.pop(ref)
                try:
                    yield t, ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - task errors arrive wrapped by Ray
                    cause = getattr(exc, "cause", None) or exc
                    yield (
                        t,
                        cause if isinstance(cause, RobenchError) else RobenchError(f"{type(cause).__name__}: {cause}"),
                    )

    def close(self) -> None:
        self.ray.shutdown()


class _Attempts:
    """Attempts per cell key, and where the latest one runs (a Ray actor on the driver's node)."""

    def __init__(self):
        self.where: dict[str, dict[str, Any]] = {}

    def bump(self, key: str, node: str = "", attack: str = "") -> int:
        n = self.where.get(key, {}).get("attempt", 0) + 1
        self.where[key] = {"attempt": n, "node": node, "attack": attack}
        return n

    def started(self) -> dict[str, dict[str, Any]]:
        return dict(self.where)


def _ray_compute(task: dict, attempts=None) -> dict[str, Any]:
    """A Ray task: one cell. A GPU cell (``--gpus-per-cell``: the task's device is ``cuda``) runs
    whole on the GPU Ray assigned it — Ray sets the worker's ``CUDA_VISIBLE_DEVICES`` to it, so it
    is the worker's ``cuda:0``, where ``compute_cell`` moves the target (the attack builds its
    state on the target's device, the harness moves each batch of items there) — and never falls
    back to the CPU: a worker without CUDA fails the cell, naming it, rather than store a CPU
    result labelled as a GPU cell."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    n = ray.get(attempts.bump.remote(task["key"], node, task.get("attack", ""))) if attempts is not None else 1
    gpu_ids: list[str] = []
    if str(task.get("device", "cpu")).startswith("cuda"):
        import torch

        gpu_ids = [str(i) for i in ray.get_gpu_ids()]
        if not torch.cuda.is_available():
            why = (
                f"torch {torch.__version__} is built without CUDA"
                if torch.version.cuda is None
                else f"torch {torch.__version__} has CUDA {torch.version.cuda} but sees no GPU"
            )
            raise RobenchError(
                f"cell {task.get('label') or task['key'][:12]}: --gpus-per-cell gave it GPU "
                f"{','.join(gpu_ids) or '?'} on Ray node {node[:12]} (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}), but CUDA is not available in its worker ({why}); "
                "a GPU cell never falls back to the CPU: install a CUDA build of torch on the GPU nodes, or drop "
                "--gpus-per-cell"
            )
    t0 = time.perf_counter()
    out = compute_cell(task)
    out["worker_seconds"] = time.perf_counter() - t0
    out["attempts"] = n
    if gpu_ids:  # cuda:0 of the worker is this GPU of its node (provenance, never the key)
        out["device"] = {**out["device"], "ray_gpu_ids": gpu_ids}
    return out


def make_executor(name: str, **options) -> Executor:
    check_name(name)
    return SerialExecutor() if name == "serial" else RayExecutor(**options)


def check_name(name: str) -> None:
    """Refuse an unknown executor before any work, with a did-you-mean."""
    if name in EXECUTORS:
        return
    import difflib

    close = difflib.get_close_matches(name, EXECUTORS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RobenchError(f"unknown executor {name!r}{hint}; choose one of {', '.join(EXECUTORS)}")
