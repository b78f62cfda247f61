"""What a cell attacks: a stratified subset of a dataset split, decoded once (or streamed per
batch when larger than the memory budget), with its labels."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robench.core.errors import RobenchError
from robench.core.registry import DATASETS


def stratified_subset(table, n: int | None, seed: int) -> list[int]:
    """``n`` rows spread over distortion types and levels: groups in a seeded order, one row of
    each group per round (so every distortion type is present once ``n`` ≥ the number of types)."""
    if not n or n >= len(table):
        return list(range(len(table)))
    rng = np.random.default_rng(seed)
    keys = ["distortion"] + (["level"] if "level" in table.columns else [])
    groups = [
        list(rng.permutation(idx)) for _, idx in sorted(table.groupby(keys).indices.items(), key=lambda kv: str(kv[0]))
    ]
    order = rng.permutation(len(groups))
    # first pass by distortion type only so types are covered before levels repeat
    by_type: dict[str, list[list[int]]] = {}
    for gi in order:
        g = groups[gi]
        by_type.setdefault(str(table.iloc[g[0]]["distortion"]), []).append(g)
    picked: list[int] = []
    while len(picked) < n:
        progressed = False
        for glist in by_type.values():
            for g in glist:
                if g:
                    picked.append(int(g.pop()))
                    progressed = True
                    break
            if len(picked) >= n:
                break
        if not progressed:
            break
    return sorted(picked)


class _BatchDecoder:
    """Decodes the dataset items of one slice once for every role that asks for them (dist and
    ref of a batch are read back to back; each ``data[i]`` decodes the whole item)."""

    def __init__(self, data):
        self.data = data
        self._last: tuple[tuple[int, int], list] | None = None

    def samples(self, start: int, stop: int) -> list:
        if self._last is None or self._last[0] != (start, stop):
            self._last = ((start, stop), None)  # drop the previous batch before decoding the next
            self._last = ((start, stop), [self.data[i] for i in range(start, stop)])
        return self._last[1]


class StreamedImages:
    """A sliceable stand-in for an ``N×3×H×W`` tensor whose rows are decoded from the dataset
    only when a batch asks for them: a grid larger than memory streams (paper profile: KADID-10k's
    2000 test pairs at 512×384 are 9.4 GB as float32). Attacks only ever take ``x[start:stop]``."""

    streamed = True  # attacks validate each batch instead of the whole input

    def __init__(self, decoder: _BatchDecoder, role: str, sides: list[int] | None, n: int, item_shape: tuple[int, ...]):
        self.decoder, self.role, self.sides, self.n = decoder, role, sides, n
        self.shape = torch.Size((n, *item_shape))

    def _key(self, i: int) -> str:
        if self.role not in ("attacked", "other"):
            return self.role
        # 2AFC: "attacked" is p1 when fewer than half prefer it, else p0; "other" the remaining one
        side = self.sides[i] if self.role == "attacked" else 1 - self.sides[i]
        return "p1" if side else "p0"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, sl: slice) -> torch.Tensor:
        if not isinstance(sl, slice) or sl.step not in (None, 1):
            raise TypeError("streamed images are read by contiguous slices")
        start, stop, _ = sl.indices(self.n)
        batch = [s[self._key(i)] for i, s in zip(range(start, stop), self.decoder.samples(start, stop))]
        return torch.stack(batch) if batch else torch.empty(0, *self.shape[1:])


@dataclass
class Items:
    """What a cell attacks: images (tensors, or :class:`StreamedImages` when they do not fit
    the memory budget) and their labels, built once per run and shared by its cells."""

    kind: str  # pairs | 2afc
    dist: Any
    ref: Any
    labels: dict[str, list]  # item_id, ref_id, distortion, level, mos | judge, attacked_side
    other: Any = None  # 2AFC: the image that is not attacked
    digest: str = ""
    content_version: str | None = None  # the dataset's build (IQADataset.content_version)
    load_seconds: float = 0.0
    streamed: bool = False

    def __len__(self) -> int:
        return int(self.dist.shape[0])


def memory_budget() -> int:
    """Bytes of decoded images a run may hold (``ROBENCH_MEMORY_BUDGET``, e.g. ``512M``, ``4G``,
    ``4GB``, plain bytes; unset or empty: 2 GiB)."""
    import re

    raw = os.environ.get("ROBENCH_MEMORY_BUDGET", "").strip()
    if not raw:
        return 2 * 2**30
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", raw.upper())
    if m is None or float(m.group(1)) <= 0:
        raise RobenchError(f"ROBENCH_MEMORY_BUDGET must be a positive size like 512M or 4G, got {raw!r}")
    return int(float(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)])


def load_items(
    dataset_name: str, split: str, n: int | None, seed: int, options: dict[str, Any], budget: int | None = None
) -> Items:
    """One pass over the chosen items decodes every image (a corrupt file fails the run before
    any compute, naming the file) and collects the labels; the tensors are kept while they fit
    ``budget`` bytes, else dropped and streamed per batch (same tensors, same results)."""
    t0 = time.perf_counter()
    budget = memory_budget() if budget is None else budget
    data = DATASETS.get(dataset_name)(split=split, **options)
    rows = stratified_subset(data.table, n, seed)
    data = data.subset(rows)
    if not len(data):
        raise RobenchError(f"dataset {dataset_name!r} split {split!r} has no items")
    roles = ("dist", "ref") if data.kind == "pairs" else ("attacked", "other", "ref")
    held: dict[str, list] | None = {r: [] for r in roles}
    used, first_shape, shapes = 0, None, {}
    labels: dict[str, list] = {"ref_id": [], "source": [], "distortion": []}
    labels.update({"mos": [], "level": []} if data.kind == "pairs" else {"judge": [], "attacked_side": []})
    for i in range(len(data)):
        imgs = _item_labels(data, i, labels)
        first_shape = first_shape or tuple(imgs["ref"].shape)
        shapes.setdefault(tuple(imgs["ref"].shape), i)
        if held is not None:
            used += sum(t.numel() * t.element_size() for t in imgs.values())
            if used > budget:
                held = None  # over budget: keep labels only, stream the pixels
            else:
                for r in roles:
                    held[r].append(imgs[r])
    ids = labels["item_id"] = _item_ids(data)
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    N = len(data)
    if len(shapes) > 1:  # the same check in memory and streamed: before any compute, naming items
        (s0, i0), (s1, i1) = list(shapes.items())[:2]
        raise RobenchError(
            f"the images of {dataset_name!r} {split} differ in size (item {ids[i0]} is "
            f"{s0[2]}×{s0[1]}, item {ids[i1]} is {s1[2]}×{s1[1]}; {len(shapes)} sizes): robench "
            f"attacks equal-size batches, so resize or crop the images to one size first"
        )
    if held is not None:
        imgs = {}
        for r in roles:  # one role at a time: the lists and the stacked copy never all coexist
            imgs[r] = torch.stack(held.pop(r))
        streamed = False
    else:
        sides = labels.get("attacked_side")
        dec = _BatchDecoder(data)
        imgs = {r: StreamedImages(dec, r, sides, N, first_shape) for r in roles}
        streamed = True
    dist = imgs["dist"] if data.kind == "pairs" else imgs["attacked"]
    return Items(
        kind=data.kind,
        dist=dist,
        ref=imgs["ref"],
        labels=labels,
        other=imgs.get("other"),
        digest=digest,
        content_version=data.content_version(),
        load_seconds=time.perf_counter() - t0,
        streamed=streamed,
    )


def _item_labels(data, i: int, labels: dict[str, list]) -> dict[str, torch.Tensor]:
    """Item i's labels appended to ``labels``; its images by role."""
    s = data[i]
    if data.kind == "2afc":
        j = float(s["judge"])
        side = 1 if j < 0.5 else 0  # attack the image people prefer less
        labels["judge"].append(j)
        labels["attacked_side"].append(side)
        imgs = {"attacked": s["p1"] if side else s["p0"], "other": s["p0"] if side else s["p1"], "ref": s["ref"]}
    else:
        labels["mos"].append(float(s["mos"]))
        labels["level"].append(int(s.get("level", 0)))
        imgs = {"dist": s["dist"], "ref": s["ref"]}
    labels["ref_id"].append(str(s["ref_id"]))
    # the source photo (crops of one photo share it): the bootstrap's independent unit
    labels["source"].append(str(s.get("source", s["ref_id"])))
    labels["distortion"].append(str(s["distortion"]))
    return imgs


def _item_ids(data) -> list[str]:
    t = data.table
    id_col = next((c for c in ("dist_path", "index", "p0_index", "p0_path") if c in t.columns), None)
    ids = [str(v) for v in (t[id_col] if id_col else range(len(t)))]
    if data.kind == "2afc":
        id_col1 = "p1_index" if "p1_index" in t.columns else "p1_path"
        ids = [f"{a}|{b}" for a, b in zip(ids, t[id_col1].astype(str))]
    return ids
