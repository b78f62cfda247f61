"""The worked "Extending robench" example (docs/examples/extending/): each one-file plugin is
imported by path, registers itself, passes the generic contract of tests/test_plugins.py, and the
four together run a grid through ``robench.run``. Everything registered here is removed again."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from robench.core.registry import ATTACKS, DATASETS, DEFENSES, MODELS, REGISTRIES, attack_suite
from test_plugins import (
    check_attack_declarations,
    check_dataset,
    check_dataset_declarations,
    check_defence,
    check_target,
    run_attack_contract,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples" / "extending"
#: file → (registry, the name it registers)
PLUGINS = {
    "my_target.py": (MODELS, "example-nmae"),
    "my_attack.py": (ATTACKS, "example-hillclimb"),
    "my_defense.py": (DEFENSES, "example-blur"),
    "my_dataset.py": (DATASETS, "example-synthetic"),
}


def _import(path: Path):
    """Import a plugin file the way a user's script would (by path), under a private module name."""
    mod_name = f"robench_example_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


@pytest.fixture(scope="module")
def examples():
    """Import the four example files (they register themselves); afterwards unregister them and
    check the registries are as they were."""
    before = {k: r.names() for k, r in REGISTRIES.items()}
    for _, name in PLUGINS.values():
        assert all(name not in r for r in REGISTRIES.values()), f"{name!r} is already registered"
    modules = {}
    try:
        for fname in PLUGINS:
            modules[fname] = _import(EXAMPLES / fname)
        yield modules
    finally:
        for reg, name in PLUGINS.values():
            if name in reg:
                reg.unregister(name)
        for fname in PLUGINS:
            sys.modules.pop(f"robench_example_{Path(fname).stem}", None)
    assert {k: r.names() for k, r in REGISTRIES.items()} == before, "the examples left entries behind"


def test_each_file_registers_its_plugin(examples):
    for fname, (reg, name) in PLUGINS.items():
        assert name in reg.names(), f"{fname} did not register {name!r}"
        assert reg.get(name).__module__ == examples[fname].__name__
    assert "example-hillclimb" not in attack_suite()  # suite = None: `--attacks all` is unchanged


def test_example_target_contract(examples):
    check_target("example-nmae")


def test_example_attack_contract(examples):
    check_attack_declarations("example-hillclimb")
    run_attack_contract("example-hillclimb")


def test_example_defence_contract(examples):
    check_defence("example-blur")


def test_example_dataset_contract(examples):
    check_dataset_declarations("example-synthetic")
    check_dataset("example-synthetic", **DATASETS.get("example-synthetic").test_options)


def test_example_grid_runs_through_the_python_api(examples, tmp_path):
    import robench
    from robench.engine.store import Store

    store = tmp_path / "s.sqlite"
    out = robench.run(
        model="example-nmae",
        attacks="example-hillclimb",
        defense="example-blur",
        dataset="example-synthetic",
        eps=[4],
        n=4,
        store=str(store),
        progress=False,
        directions="up",
        dataset_options=dict(DATASETS.get("example-synthetic").test_options),
    )
    (run,) = out["runs"]
    assert [c["status"] for c in run["cells"]] == ["done"]
    with Store(store) as st:
        cells = st.cells()
        assert len(cells) == 1
        cell = cells.iloc[0]
        assert (cell["target"], cell["attack"], cell["dataset"]) == (
            "example-nmae+example-blur",
            "example-hillclimb",
            "example-synthetic",
        )
        rows = st.results(cell["key"])
    assert len(rows) == 4 and (rows["linf"] <= 4 / 255 + 1e-6).all() and (rows["score"] >= rows["clean_score"]).all()
    assert set(rows["mos"]) <= {1.0, 2.0, 3.0, 4.0}
