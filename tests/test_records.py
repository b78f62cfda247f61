"""`robench export --format records`: every record validates against the shipped JSON Schema;
`robench check` takes records as a baseline: passes on the store they came from, fails on a copy
with one cell made worse."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from robench.core.errors import RobenchError


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, robench_home):
    import os

    from robench.core.config import RunConfig
    from robench.data.mini import build_mini
    from robench.engine.grid import run_config

    os.environ["ROBENCH_HOME"] = str(robench_home)
    build_mini(size=32, crops_per_source=1, seed=0, progress=False)
    store = tmp_path_factory.mktemp("rec") / "s.sqlite"
    cfg = RunConfig.from_dict(
        {
            "targets": "ssim,psnr",
            "attacks": "fgsm,pgd",
            "eps": [2, 8],
            "n": 24,
            "store": str(store),
            "directions": "up,mos-split",
            "dataset_options": {"size": 32, "crops_per_source": 1},
            "attack_params": {"pgd": {"steps": 3}},
        }
    )
    run_config(cfg, progress=False)
    return store


def test_records_validate_and_check_accepts_them(small_store, tmp_path):
    import jsonschema

    from robench.results.checks import check
    from robench.results.records import schema, write_records

    out = tmp_path / "records"
    names = write_records(small_store, out, n_boot=100)
    assert len(names) == 2  # ssim × none, psnr × none
    for n in names:
        rec = json.loads(open(n).read())
        jsonschema.validate(rec, schema())
        assert rec["model"]["weights_sha256"] and rec["robench"]["version"]
        ev = rec["evaluations"][0]
        assert ev["attacked"][0]["ci"] is None or ev["attacked"][0]["ci"][0] <= ev["attacked"][0]["ci"][1]
        assert {e["direction"] for e in rec["evaluations"]} == {"up", "mos-split"}
    # a broken record is refused, naming the schema
    bad = json.loads(open(names[0]).read())
    del bad["model"]["weights_sha256"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema())
    res = check(small_store, out, n_boot=200)
    assert res["passed"] and res["counts"]["ok"] > 0 and res["counts"]["missing"] == 0
    # one cell made worse: the PGD ranking-attack cell of ssim, its attacked ranking reversed
    worse = tmp_path / "worse.sqlite"
    shutil.copy(small_store, worse)
    db = sqlite3.connect(worse)
    (key,) = db.execute(
        "SELECT key FROM cells WHERE target='ssim' AND attack='pgd' AND config LIKE '%mos-split%'"
    ).fetchone()
    db.execute("UPDATE results SET score = -clean_score WHERE cell_key=?", (key,))
    db.commit()
    db.close()
    res = check(worse, out, n_boot=200)
    assert not res["passed"]
    failed = [r for r in res["rows"] if r["status"] == "fail"]
    assert failed and all("pgd" in r["cell"] and "mos-split" in r["cell"] for r in failed)


def test_export_refuses_a_folder_with_other_files(small_store, tmp_path):
    from robench.results.records import write_records

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RobenchError, match="not a robench record"):
        write_records(small_store, tmp_path, n_boot=50)
    assert (tmp_path / "notes.txt").read_text() == "mine"
