"""pyiqa's full-reference metrics as targets ``pyiqa:<name>`` (optional: ``pip install robench[pyiqa]``).

pyiqa is installed without its dependencies (its pinned torchvision has no CPU build on the
package index, and its ``__init__`` imports every architecture, learned ones included). So
robench never runs that ``__init__``: ``pyiqa``, ``pyiqa.archs`` and ``pyiqa.utils`` are entered
as bare namespace packages over the installed files and only the module defining a metric's
architecture is imported (the classic metrics need torch, numpy and scipy alone). A metric's
options, direction and score range come from pyiqa's own table (``default_model_configs``).

Weights are never downloaded: pyiqa's downloader is replaced by a look-up in its cache (torch hub
dir ``/pyiqa``), and a metric whose file is absent is refused at once, naming the path.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import sys
import types
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from robench.core.errors import RobenchError
from robench.core.target import Target, TargetCard, WeightsInfo

#: the release robench is tested with (constraints.txt pins it)
PYIQA_VERSION = "0.1.16"
INSTALL = f"pip install --no-deps pyiqa=={PYIQA_VERSION} (or robench[pyiqa])"
#: the smallest side a metric accepts where pyiqa's own check is a crash: MS-SSIM's five scales
#: halve the image four times and its 11-px window must still fit (11 · 2⁴)
MIN_SIZE = {"ms_ssim": 176}


class WeightsNotCached(RobenchError):
    """A pyiqa metric's weights are not in pyiqa's cache (robench does not download)."""


def _root() -> Path:
    spec = importlib.util.find_spec("pyiqa") if "pyiqa" not in sys.modules else None
    mod = sys.modules.get("pyiqa")
    if mod is not None:
        paths = list(getattr(mod, "__path__", []) or [])
        if paths:
            return Path(paths[0])
        raise RobenchError(f"the module named pyiqa ({mod!r}) is not the pyiqa package; {INSTALL}")
    if spec is None or not spec.submodule_search_locations:
        raise RobenchError(f"pyiqa targets need the optional package pyiqa: {INSTALL}")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """Where pyiqa keeps downloaded weights (torch hub dir / pyiqa)."""
    return Path(torch.hub.get_dir()) / "pyiqa"


def cached_file(url: str, model_dir: str | None = None, progress: bool = True, file_name: str | None = None) -> str:
    """pyiqa's ``load_file_from_url`` without the download: the cached path, or a one-line refusal."""
    name = file_name or os.path.basename(urlparse(url).path)
    path = Path(model_dir or cache_dir()).absolute() / name
    if not path.is_file():
        raise WeightsNotCached(
            f"weights {name} are not in pyiqa's cache ({path}); robench does not download: put the file there"
        )
    return str(path)


def _namespace() -> Path:
    """Enter pyiqa's packages without running their ``__init__`` (once), the downloader guarded."""
    root = _root()
    for name, sub in (("pyiqa", root), ("pyiqa.archs", root / "archs"), ("pyiqa.utils", root / "utils")):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__path__ = [str(sub)]
            sys.modules[name] = mod
    try:
        dl = importlib.import_module("pyiqa.utils.download_util")
    except ImportError:
        dl = None  # its own dependencies missing: the learned metrics that need it do not import either
    for mod in [m for n, m in list(sys.modules.items()) if n.startswith("pyiqa.") and m is not None]:
        if getattr(mod, "load_file_from_url", None) not in (None, cached_file):
            mod.load_file_from_url = cached_file  # modules that imported it by name, before or now
    if dl is not None:
        dl.load_file_from_url = cached_file
    return root


def configs() -> dict[str, dict[str, Any]]:
    """pyiqa's full-reference metric table: name → its config (metric_opts, lower_better, score_range)."""
    _namespace()
    table = importlib.import_module("pyiqa.default_model_configs").DEFAULT_CONFIGS
    return {k: v for k, v in table.items() if v.get("metric_mode") == "FR"}


@functools.cache
def _arch_modules(archs: Path) -> dict[str, str]:
    """Class name → the ``*_arch.py`` module defining it, read once per installation (without
    importing any: most need packages robench does not install)."""
    out: dict[str, str] = {}
    for path in sorted(archs.glob("*_arch.py")):
        for name in re.findall(r"^class (\w+)\(", path.read_text(errors="replace"), re.M):
            out.setdefault(name, path.stem)
    return out


def _arch(type_name: str):
    """The class of a pyiqa architecture, importing only the module that defines it."""
    module = _arch_modules(_namespace() / "archs").get(type_name)
    if module is None:
        raise RobenchError(f"pyiqa {PYIQA_VERSION} defines no architecture {type_name!r}")
    return getattr(importlib.import_module(f"pyiqa.archs.{module}"), type_name)


def _score_range(text: str | None) -> tuple[float, float] | None:
    """pyiqa's rough range ('0, 1', '~0, ~40'): the numbers, None when one end is open."""
    try:
        lo, hi = (float(p.strip().lstrip("~")) for p in (text or "").split(","))
    except ValueError:
        return None
    return lo, hi


class PyIQATarget(Target):
    requires_weights = False  # pyiqa's classic metrics have none; learned ones read pyiqa's cache

    def __init__(self, metric: str, **options):
        super().__init__()
        table = configs()
        if metric not in table:
            import difflib

            close = difflib.get_close_matches(metric, list(table), n=1)
            hint = f"; did you mean 'pyiqa:{close[0]}'?" if close else ""
            raise RobenchError(f"pyiqa {PYIQA_VERSION} has no full-reference metric {metric!r}{hint}")
        cfg = table[metric]
        opts = {**cfg["metric_opts"], **options}
        try:
            cls = _arch(opts.pop("type"))
            self.net = cls(**opts)
        except RobenchError:
            raise
        except ImportError as exc:
            raise RobenchError(f"pyiqa:{metric} cannot be imported here: {exc}") from None
        except Exception as exc:  # pyiqa raises several types for bad options / missing files
            raise RobenchError(f"pyiqa could not create {metric!r}: {type(exc).__name__}: {exc}") from None
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.card = TargetCard(
            name=f"pyiqa:{metric}",
            lower_better=bool(cfg.get("lower_better", False)),
            score_range=_score_range(cfg.get("score_range")),
            summary=f"pyiqa {PYIQA_VERSION} metric {metric} ({type(self.net).__name__}), inputs RGB in [0, 1]",
            weights=WeightsInfo("pyiqa"),
            paper="see pyiqa's model card",
            min_size=MIN_SIZE.get(metric, 16),
        )

    def score(self, dist: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        # pyiqa computes some metrics in float64; the harness's scores are float32
        return self.net(dist, ref).reshape(-1).float()


def catalogue() -> list[dict[str, Any]]:
    """Every pyiqa full-reference metric with whether it runs here: ``ok`` (built offline),
    ``weights`` (its file is not in pyiqa's cache: the path), ``import`` (a dependency is
    missing); with its direction and pyiqa's score range."""
    out = []
    for name, cfg in configs().items():
        row = {
            "name": f"pyiqa:{name}",
            "summary": f"pyiqa {PYIQA_VERSION} {cfg['metric_opts']['type']}",
            "lower_better": bool(cfg.get("lower_better", False)),
            "score_range": cfg.get("score_range"),
        }
        try:
            PyIQATarget(name)
            row.update(status="ok", detail="runs offline")
        except WeightsNotCached as exc:
            row.update(status="weights", detail=str(exc))
        except RobenchError as exc:
            row.update(status="import", detail=str(exc))
        out.append(row)
    return out
