"""One run configuration (issue 16): CLI flags, a TOML file and the Python API build the same
RunConfig and give identical cell keys and records; the resolved config written beside a run
reproduces it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import robench
from robench.core.config import RunConfig, dumps_toml
from robench.core.errors import RobenchError, UnknownNameError
from robench.engine.store import Store

TINY_OPTS = {"size": 32, "crops_per_source": 1}
FLAGS = [
    "--model",
    "ssim",
    "--attacks",
    "fgsm,pgd",
    "--eps",
    "8,2",
    "--n",
    "6",
    "--attack-option",
    "pgd.steps=3",
    "--dataset-option",
    "size=32",
    "--dataset-option",
    "crops_per_source=1",
]
SETTINGS = {
    "model": "ssim",
    "attacks": "fgsm,pgd",
    "eps": [8, 2],
    "n": 6,
    "attack_params": {"pgd": {"steps": 3}},
    "dataset_options": TINY_OPTS,
}


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "robench.cli", *args], capture_output=True, text=True)
    return r


def contents(store):
    with Store(store) as st:
        cells, res = st.cells(), st.results()
    keys = sorted(cells["key"])
    rows = res.sort_values(["cell_key", "eps", "item"])[["cell_key", "eps", "item", "clean_score", "score"]]
    return keys, rows.reset_index(drop=True)


def test_cli_file_and_python_give_the_same_cells(tiny_mini, tmp_path):
    s_cli, s_file, s_obj, s_kw = (tmp_path / f"{k}.sqlite" for k in ("cli", "file", "obj", "kw"))
    r = cli("run", *FLAGS, "--store", str(s_cli), "--json")
    assert r.returncode == 0, r.stderr
    written = json.loads(r.stdout)["config"]
    toml = tmp_path / "run.toml"
    toml.write_text(
        dumps_toml(
            {
                "targets": ["ssim"],
                "attacks": ["fgsm", "pgd"],
                "eps": [2.0, 8.0],
                "n": 6,
                "store": str(s_file),
                "dataset_options": TINY_OPTS,
                "attack_params": {"pgd": {"steps": 3}},
            }
        )
    )
    r = cli("run", "--config", str(toml), "--json")
    assert r.returncode == 0, r.stderr
    robench.run(RunConfig.from_dict({**SETTINGS, "store": str(s_obj)}), progress=False)
    robench.run(**SETTINGS, store=str(s_kw), progress=False)
    ref_keys, ref_rows = contents(s_cli)
    # no direction given: both protocols (up and the ranking attack) for each attack
    assert len(ref_keys) == 2 * 2 and len(ref_rows) == 2 * 2 * 2 * 6
    for other in (s_file, s_obj, s_kw):
        keys, rows = contents(other)
        assert keys == ref_keys, other
        assert rows.equals(ref_rows), other
    # the resolved config beside the run reproduces it: same keys, so every cell is cached
    text = open(written).read()
    assert 'profile = "quick"' in text and "eps = [2.0, 8.0]" in text and "size = 32" in text
    r = cli("run", "--config", written, "--json")
    assert r.returncode == 0, r.stderr
    assert [c["status"] for c in json.loads(r.stdout)["cells"]] == ["cached"] * 4


def test_resolve_fills_every_setting_from_the_profile_and_the_plugins():
    c = RunConfig.from_dict({"model": "birqa", "defense": "aat", "attacks": "all"}).resolve()
    assert c.dataset == "mini" and c.dataset_options == {"size": 128} and c.eps == [2.0, 8.0] and c.n == 32
    assert c.directions == ["up", "mos-split"]  # the main job: both protocols
    assert RunConfig.from_dict({"model": "ssim", "dataset": "mini-2afc"}).resolve().directions == ["up"]
    assert c.attacks == list(robench.core.registry.attack_suite()) and len(c.attacks) >= 8
    p = RunConfig.from_dict({"model": "birqa", "profile": "paper"}).resolve()
    assert p.dataset_options == {"size": 512} and p.eps == [2.0, 4.0, 6.0, 8.0, 10.0]  # not 128 px
    assert c.resolve() == c  # resolving is idempotent
    again = RunConfig.from_dict({k: v for k, v in __import__("tomllib").loads(c.to_toml()).items()})
    assert again.resolve() == c
    [spec] = c.specs()
    assert spec.defense == "aat" and spec.dataset_options == {"size": 128}


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'attacks'"):
        RunConfig.from_dict({"model": "ssim", "atacks": "pgd"})
    with pytest.raises(UnknownNameError, match="did you mean"):
        RunConfig.from_dict({"model": "ssim", "attacks": "pgdd"}).resolve()
    with pytest.raises(RobenchError, match="no target"):
        RunConfig.from_dict({"attacks": "pgd"})
    bad = tmp_path / "bad.toml"
    bad.write_text("targets = [\n")
    with pytest.raises(RobenchError, match="bad.toml: not valid TOML"):
        RunConfig.from_toml(bad)
    r = cli("run", "--config", str(bad))
    assert r.returncode == 2 and "not valid TOML" in r.stderr
    good = tmp_path / "good.toml"
    good.write_text('targets = ["ssim"]\n')
    r = cli("run", "--config", str(good), "--model", "birqa")
    assert r.returncode == 2 and "drop --model" in r.stderr
