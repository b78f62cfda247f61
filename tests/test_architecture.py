"""The house: the package's import graph has no cycle, counting imports inside
functions, and its folders are layered contracts → plugins → engine → results → cli."""

from __future__ import annotations

import ast
from pathlib import Path

import robench

ROOT = Path(robench.__file__).parent


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """Edges module → robench module it imports, at any depth of the file (function-level
    imports hide cycles that only bite at call time). ``from pkg import name`` points at the
    submodule when ``name`` is one, else at ``pkg``."""
    mods = modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(head + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for n in names:
                k = known(n) if n.startswith("robench") else None
                if k and k != m:
                    graph[m].add(k)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v) :] + [v]
            if v not in state and (c := visit(v)):
                return c
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (c := visit(u)):
            return c
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_counting_function_level_imports():
    graph = import_graph()
    assert len(graph) > 50  # the walk saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


LAYER = {"core": 0, "data": 1, "models": 1, "attacks": 1, "defenses": 1, "engine": 2, "results": 3, "cli": 4}


PLUGINS = ("data", "models", "attacks", "defenses")


def layer_violations(graph: dict[str, set[str]]) -> list[tuple[str, str, str]]:
    """(module, import, rule) for every edge that breaks the layering: a module importing a layer
    above its own (a plugin importing the engine, the engine importing results, …), and the
    engine or results importing a module *inside* a plugin package — they reach plugins through
    the registries, the hooks plugins declare, and each plugin package's public names
    (``robench.attacks``, ``robench.models``: what its ``__init__`` exports)."""
    bad = []
    for m, deps in graph.items():
        lm = m.split(".")[1] if m.count(".") else None
        for d in deps:
            ld = d.split(".")[1] if d.count(".") else None
            if lm is None or ld is None:
                continue
            if LAYER.get(ld, 0) > LAYER.get(lm, 0):
                bad.append((m, d, f"{lm} imports the {ld} layer above it"))
            elif lm in ("engine", "results") and ld in PLUGINS and d != f"robench.{ld}":
                bad.append((m, d, f"{lm} imports a module inside the {ld} plugins"))
    return sorted(bad)


def test_layer_check_catches_planted_imports():
    planted = {
        "robench.attacks.facpa": {"robench.engine.train", "robench.core.training"},
        "robench.engine.bench": {"robench.attacks._ascent", "robench.attacks", "robench.core.stats"},
        "robench.engine.cell": {"robench.results.stats"},
        "robench.defenses.recipes": {"robench.attacks.base", "robench.models"},  # plugin → plugin: allowed
    }
    assert [(m, d) for m, d, _ in layer_violations(planted)] == [
        ("robench.attacks.facpa", "robench.engine.train"),
        ("robench.engine.bench", "robench.attacks._ascent"),
        ("robench.engine.cell", "robench.results.stats"),
    ]


def test_layering_holds():
    """core ← plugins (data, models, attacks, defenses) ← engine ← results ← cli."""
    bad = layer_violations(import_graph())
    assert not bad, "\n".join(f"{m} -> {d}: {why}" for m, d, why in bad)


def test_contracts_import_nothing_above_them():
    """robench.core is the bottom: it may import only itself (plugins and the engine build on it)."""
    bad = [
        (m, d)
        for m, deps in import_graph().items()
        if m.startswith("robench.core")
        for d in deps
        if not d.startswith("robench.core")
    ]
    assert not bad, bad


def test_engine_and_results_never_import_the_cli():
    bad = [
        (m, d)
        for m, deps in import_graph().items()
        if m.split(".")[1:2] and LAYER.get(m.split(".")[1], 0) < 4
        for d in deps
        if d.startswith("robench.cli")
    ]
    assert not bad, bad


# --------------------------------------------------------------------------------------------
# the engine knows no plugin by name


ENGINE_PACKAGES = ("core", "engine", "results")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def plugin_names() -> set[str]:
    from robench.core.registry import REGISTRIES

    names = set()
    for reg in REGISTRIES.values():
        for n in reg.names():
            names.add(n)
            names.add(n.split(".")[0])  # the architecture of a variant: lpips of lpips.alex
    return names


def plugin_mentions(source: str, names: set[str]) -> list[tuple[int, str]]:
    """Code (not comments, not docstrings) that names a plugin: a string constant equal to a name
    or starting ``name.``. Record field names (dict keys, subscripts: ``row["psnr"]`` is the
    perceptibility column, not the PSNR target) are not plugin references; names of one or two
    letters (recipes ``r``, ``at``) count only where compared, as in ``defense == "at"``."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    compared = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            skip |= {id(k) for k in node.keys if k is not None}
        elif isinstance(node, ast.Subscript):
            skip.add(id(node.slice))
        elif isinstance(node, ast.Compare):
            for c in [node.left, *node.comparators]:
                compared |= {id(x) for x in ast.walk(c)}
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            v = node.value.strip()
            if len(v) <= 2 and id(node) not in compared:
                continue
            if v in names or any(v.startswith(n + ".") and len(n) > 2 for n in names):
                hits.append((node.lineno, v))
    return hits


def test_plugin_name_check_catches_a_planted_name():
    names = {"pgd", "mini", "lpips"}
    names |= {"at"}
    src = (
        'def f(a, row):\n    """pgd in a docstring is fine"""\n    # pgd in a comment is fine\n'
        '    x = {"mini": 1}[row["mini"]]\n    return a == "pgd" or a.startswith("lpips.x") or a == "at" or "at"\n'
    )
    assert sorted(v for _, v in plugin_mentions(src, names)) == ["at", "lpips.x", "pgd"]


#: strings that equal a plugin name but are not references to the plugin, with why
NOT_PLUGINS = {
    ("robench/engine/store.py", "psnr"): "perceptibility column of the results table",
    ("robench/engine/store.py", "ssim"): "perceptibility column of the results table",
    ("robench/results/report.py", "psnr"): "perceptibility field of a cell",
    ("robench/results/report.py", "ssim"): "perceptibility field of a cell",
    ("robench/results/cells.py", "psnr"): "perceptibility column read into a cell",
    ("robench/results/cells.py", "ssim"): "perceptibility column read into a cell",
    ("robench/engine/validate.py", "autoattack"): "the optional Python package reported by validate",
}


def test_engine_results_and_contracts_name_no_plugin():
    names = plugin_names()
    assert {"pgd", "facpa", "diffpure", "aat", "mini", "birqa"} <= names
    found = []
    for pkg in ENGINE_PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT.parent))
            for line, v in plugin_mentions(path.read_text(), names):
                if (rel, v) in NOT_PLUGINS:
                    continue
                found.append(f"{path.relative_to(ROOT.parent)}:{line}: {v!r}")
    assert not found, "engine code names plugins:\n" + "\n".join(found)


# --------------------------------------------------------------------------------------------
# functions a reader holds in mind: body ≤ 60 lines (docstring excluded); the exceptions below
# are today's, each capped at its current length so none grows, to be split in turn

MAX_BODY = 60
LONG = {  # "module:function": (current body lines, why it is still long)
    "robench/data/mini.py:build_mini": (122, "the built set's one pass: photos, distortions, labels, manifest"),
    "robench/engine/train.py:train": (94, "clean training driver: data, trainer, selection, provenance"),
    "robench/engine/finetune.py:adversarial_train": (86, "fine-tune driver: recipe, trainer, provenance"),
    "robench/defenses/diffpure.py:train_diffpure": (78, "the purifier's training driver"),
    "robench/attacks/_ascent.py:ascend": (66, "the shared ascent loop (hot path)"),
}


def _bodies():
    root = Path(robench.__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
        rel = f"robench/{f.relative_to(root).as_posix()}"
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = n.body
                doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
                start = body[1].lineno if doc and len(body) > 1 else body[0].lineno
                yield f"{rel}:{n.name}", n.end_lineno - start + 1


def test_functions_stay_short():
    over = {name: n for name, n in _bodies() if n > MAX_BODY}
    new = {k: v for k, v in over.items() if k not in LONG}
    grown = {k: (v, LONG[k][0]) for k, v in over.items() if k in LONG and v > LONG[k][0]}
    assert not new, f"functions over {MAX_BODY} body lines: {new}"
    assert not grown, f"listed long functions grew (now, cap): {grown}"
    stale = sorted(set(LONG) - set(over))
    assert not stale, f"no longer over {MAX_BODY} lines: drop from LONG {stale}"
