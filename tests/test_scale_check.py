"""The scale check (core.flags ``scale``): a defence that shrinks every score toward one value
looks robust in MOS units; the report, report.json and ``robench check`` flag it, and the report
names the protocol (direction) of every table and row."""

from __future__ import annotations

import json

import pytest

import robench
from robench.core import flags as FL
from robench.core.registry import DEFENSES
from robench.defenses.wrappers import InferenceDefense

TINY = {"size": 32, "crops_per_source": 1, "progress": False}


class Squash(InferenceDefense):
    """A synthetic collapsed model: the distorted image pulled 95 % of the way to its reference,
    so every SSIM is ≈ 1 — a metric that no attack moves far, and that no longer ranks anything."""

    name = "test-squash"
    applies_to = "both"  # it reads the reference (and returns it unchanged)
    defaults = {"keep": 0.05}

    def forward(self, dist, ref):
        return ref + float(self.params["keep"]) * (dist - ref), ref


@pytest.fixture
def squash():
    DEFENSES.register("test-squash", summary="test only")(Squash)
    try:
        yield
    finally:
        DEFENSES.unregister("test-squash")


@pytest.fixture
def store(tiny_mini, squash, tmp_path):
    path = tmp_path / "s.sqlite"
    robench.run(
        model="ssim",
        defenses="none,test-squash",
        attacks="fgsm",
        directions="up,mos-split",
        eps=[8],
        n=16,
        store=str(path),
        dataset_options=TINY,
        progress=False,
    )
    return path


def test_collapsed_target_is_flagged_everywhere(store, tmp_path):
    from robench.results.checks import check, make_baseline, write_baseline
    from robench.results.cells import load_cells
    from robench.results.report import write_report

    cells, _ = load_cells(store)
    squashed = [c for c in cells if c.defense == "test-squash"]
    base = [c for c in cells if c.defense == "none"]
    assert squashed and base
    for c in squashed:
        assert c.flags["scale"]["collapsed"] and c.flags["scale"]["sd_ratio"] < FL.SCALE_RATIO
        assert "scale" in c.active_flags
    assert not any("scale" in c.active_flags for c in base)
    out = tmp_path / "rep"
    write_report(store, out, ot="exact", n_boot=50, plots=False, pdf=False)
    rep = json.loads((out / "report.json").read_text())
    assert "scale" in rep["flag_legend"]
    assert all("scale" in f["flags"] for f in rep["flagged_cells"] if f["defense"] == "test-squash")
    rob = next(t for t in rep["tables"] if t["name"] == "sweep")
    assert any("scale" in v for v in rob["flags"].values()) and "scale" in rob["flag_legend"]
    assert "[scale]" in (out / "sweep.md").read_text()
    # `check` lists it and fails on it when asked
    base_path = tmp_path / "b.json"
    write_baseline(make_baseline(store), base_path)
    res = check(store, base_path, n_boot=50, fail_on=("scale",))
    assert not res["passed"] and any("scale" in r["flags"] for r in res["flagged"])


def test_report_names_the_protocol_of_every_table_and_row(store, tmp_path):
    from robench.results.report import write_report

    out = tmp_path / "rep"
    written = write_report(store, out, ot="exact", n_boot=50, plots=False, pdf=False)
    rep = json.loads((out / "report.json").read_text())
    assert rep["protocols"] == {"up": "score inflation (up)", "mos-split": "ranking attack (mos-split)"}
    names = {t["name"]: t for t in rep["tables"]}
    assert "sweep" in names and "sweep-mos-split" in names and "robustness-mos-split" in written["tables"]
    for t in rep["tables"]:
        assert t["protocol"] in rep["protocols"].values() and t["caption"].startswith(f"Protocol: {t['protocol']}")
    assert not any(t["name"].startswith("ir-") for t in rep["tables"])  # IR-Score: score inflation only
    assert {c["direction"] for c in rep["cells"]} == {"up", "mos-split"}
    assert all(c["protocol"] for c in rep["cells"]) and all(r["protocol"] for r in rep["comparisons"])
    for c in rep["cells"]:  # gains in the target's units and in units of its own clean-score SD
        for e in c["attacked"]:
            assert e["mean_gain"] >= -1e-9 and e["mean_gain_per_sd"] is not None
    paper = (out / "paper.md").read_text()
    assert "ranking attack (mos-split)" in paper and "k/510" in paper
