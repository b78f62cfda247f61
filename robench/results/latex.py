"""LaTeX escaping shared by the report tables and paper.tex."""

from __future__ import annotations

import unicodedata


def latex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("ε", r"$\varepsilon$"),
        ("Δ", r"$\Delta$"),
        ("†", r"$^{\dagger}$"),
        ("‡", r"$^{\ddagger}$"),
        ("—", "--"),
        ("–", "--"),
        ("−", "$-$"),
        ("≥", r"$\geq$"),
        ("≤", r"$\leq$"),
        ("·", r"$\cdot$"),
        ("×", r"$\times$"),
        ("±", r"$\pm$"),
        ("→", r"$\to$"),
        ("…", r"\ldots{}"),
        ("ŷ", r"$\hat{y}$"),
    ):
        text = text.replace(a, b)
    # anything else outside ASCII would stop pdflatex ("Unicode character not set up"): fold it
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
