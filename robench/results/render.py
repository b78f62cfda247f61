"""Table writers: booktabs LaTeX (and its standalone document, compiled when pdflatex exists)
and Markdown."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from robench.core.errors import RobenchError
from robench.results.latex import latex_escape
from robench.results.table import MARK_MD, MARK_TEX, Table, _strings


def to_latex(t: Table) -> str:
    """booktabs table through pandas Styler; best values bold, significance marked."""
    s = _strings(t, MARK_TEX, "--", r" $\pm$ ")
    names = [latex_escape(str(n)) if n is not None else None for n in s.index.names]
    s.index = (
        s.index.set_levels([[latex_escape(str(v)) for v in lvl] for lvl in s.index.levels])
        if isinstance(s.index, pd.MultiIndex)
        else pd.Index([latex_escape(str(v)) for v in s.index])
    )
    s.index.names = names
    if isinstance(s.columns, pd.MultiIndex):
        s.columns = pd.MultiIndex.from_tuples([tuple(latex_escape(str(x)) for x in c) for c in s.columns])
    else:
        s.columns = [latex_escape(str(c)) for c in s.columns]
    bold = t.bold if t.bold is not None else pd.DataFrame(False, index=t.df.index, columns=t.df.columns)
    props = np.where(bold.to_numpy(), "textbf:--rwrap;", "")
    sty = s.style.apply(lambda _: props, axis=None)
    tex = sty.to_latex(
        hrules=True,
        caption=latex_escape(t.caption),
        label=f"tab:{t.name}",
        position_float="centering",
        multicol_align="c",
        multirow_align="t",
        column_format="l" * s.index.nlevels + "r" * s.shape[1],
        environment="table",
    )
    if s.shape[1] + s.index.nlevels > 10:  # wide tables (Table 3 has 19 columns): scale to the line
        tex = tex.replace("\\begin{tabular}", "\\resizebox{\\linewidth}{!}{%\n\\begin{tabular}", 1)
        tex = tex.replace("\\end{tabular}", "\\end{tabular}}", 1)
    if t.footnote:
        tex = tex.replace(
            "\\end{table}", "\\par\\smallskip{\\footnotesize " + latex_escape(t.footnote) + "}\n\\end{table}"
        )
    return tex


def to_markdown(t: Table) -> str:
    s = _strings(t, MARK_MD, "—")
    if t.bold is not None:
        s = s.mask(t.bold.to_numpy(), "**" + s + "**")
    names = list(s.index.names) if isinstance(s.index, pd.MultiIndex) else [s.index.name or ""]
    cols = [" ".join(x for x in c if x) if isinstance(c, tuple) else str(c) for c in s.columns]
    lines = [
        f"### {t.title}",
        "",
        t.caption,
        "",
        "| " + " | ".join([n or "" for n in names] + cols) + " |",
        "|" + "---|" * (len(names) + len(cols)),
    ]
    for idx, r in zip(s.index, s.to_numpy()):
        idx = idx if isinstance(idx, tuple) else (idx,)
        lines.append("| " + " | ".join([str(i) for i in idx] + list(r)) + " |")
    if t.footnote:
        lines += ["", t.footnote]
    return "\n".join(lines) + "\n"


STANDALONE = r"""\documentclass[10pt]{article}
\usepackage[T1]{fontenc}
\usepackage[utf8]{inputenc}
\usepackage{booktabs}
\usepackage{multirow}
\usepackage{graphicx}
\usepackage[landscape,margin=1.2cm]{geometry}
\begin{document}
%s
\end{document}
"""


def compile_pdf(tex: Path) -> Path | None:
    """pdflatex the standalone wrapper when pdflatex is installed (None when it is not)."""
    exe = shutil.which("pdflatex")
    if exe is None:
        return None
    proc = subprocess.run(
        [exe, "-interaction=nonstopmode", "-halt-on-error", tex.name],
        cwd=tex.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RobenchError(f"pdflatex failed on {tex}:\n{proc.stdout[-2000:]}")
    return tex.with_suffix(".pdf")
