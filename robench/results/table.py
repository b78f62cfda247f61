"""A report table: numbers, caption, marks and flags (written as Markdown, LaTeX and JSON by
results.report)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from robench.core import flags as FL


@dataclass
class Table:
    name: str
    title: str
    df: pd.DataFrame  # numbers (NaN = not available)
    caption: str
    footnote: str = ""
    bold: pd.DataFrame | None = None  # True where a cell is bold
    marks: dict = field(default_factory=dict)  # (row, col) → "+" (significantly better) | "-" (worse)
    flags: dict = field(default_factory=dict)  # (row, col) → active flag codes of the cell(s) behind the value
    precision: int = 3
    col_precision: dict = field(default_factory=dict)  # column → digits where 3 is wrong (minutes)
    spread: dict = field(default_factory=dict)  # (row, col) → s.d. over training seeds (a value shown as mean ± s.d.)
    direction: str | None = None  # the attack direction of every cell behind the table (core.directions)
    protocol: str | None = None

    def to_dict(self) -> dict:
        extra = {"spread": {f"{r}|{c}": v for (r, c), v in self.spread.items()}} if self.spread else {}
        return {
            **extra,
            "name": self.name,
            "title": self.title,
            "caption": self.caption,
            "footnote": self.footnote,
            "direction": self.direction,
            "protocol": self.protocol,
            "columns": [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in self.df.columns],
            "rows": [
                {
                    "index": list(i) if isinstance(i, tuple) else [i],
                    "values": [
                        None if pd.isna(v) else (float(v) if isinstance(v, (int, float, np.floating)) else v) for v in r
                    ],
                }
                for i, r in zip(self.df.index, self.df.to_numpy(dtype=object))
            ],
            "marks": {f"{r}|{c}": m for (r, c), m in self.marks.items()},
            "flags": {f"{r}|{c}": list(v) for (r, c), v in self.flags.items()},
            "flag_legend": {c: FL.LEGEND[c] for c in self.flag_codes()},
        }

    def flag_codes(self) -> list[str]:
        used = {c for v in self.flags.values() for c in v}
        return [c for c, _, _ in FL.FLAGS if c in used]


MARK_TEX = {"+": r"$^{\dagger}$", "-": r"$^{\ddagger}$"}
MARK_MD = {"+": "†", "-": "‡"}


def _fmt(v, precision: int) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "—"
    return f"{v:.{precision}f}"


def _strings(t: Table, marks: dict[str, str], dash: str, pm: str = " ± ") -> pd.DataFrame:
    digits = [t.col_precision.get(c, t.precision) for c in t.df.columns]
    s = pd.DataFrame(
        [[_fmt(v, d) for v, d in zip(r, digits)] for r in t.df.to_numpy(dtype=object)],
        index=t.df.index,
        columns=t.df.columns,
    )
    s = s.replace("—", dash)
    for (idx, col), sd in t.spread.items():  # a mean over training seeds: mean ± s.d.
        if s.loc[idx, col] != dash:
            s.loc[idx, col] = s.loc[idx, col] + pm + _fmt(sd, t.col_precision.get(col, t.precision))
    for (idx, col), m in t.marks.items():
        s.loc[idx, col] = s.loc[idx, col] + marks[m]
    for (idx, col), codes in t.flags.items():  # a flagged value carries its codes (legend in the footnote)
        s.loc[idx, col] = s.loc[idx, col] + " [" + ",".join(codes) + "]"
    return s
