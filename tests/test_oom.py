"""Out of memory (issue 18.3), simulated on the CPU: a cell whose batch does not fit halves it and
retries the failed batch (down to 1), records the batch size it used, and gives the numbers of a
run at that batch size from the start; out of memory at batch size 1 is a failed cell that says so."""

from __future__ import annotations

import json

import pytest
import torch

from robench.core.config import RunSpec
from robench.core.device import halving_batches, is_oom
from robench.core.errors import OutOfMemory, RobenchError
from robench.core.target import Target
from robench.engine.store import Store

TINY_OPTS = {"size": 32, "crops_per_source": 1}
#: a deterministic attack, an iterative one (with its half-budget convergence re-run) and a
#: randomised score-based one (per-batch seeded draws)
ATTACKS = ["fgsm", "pgd", "square"]
COLUMNS = ["item", "eps", "clean_score", "score", "linf", "l2", "queries", "psnr", "ssim"]


def _spec(store, model: str = "ssim") -> RunSpec:
    return RunSpec(
        model=model,
        attacks=list(ATTACKS),
        eps=[2, 8],
        n=8,
        store=store,
        dataset_options=dict(TINY_OPTS),
        attack_params={"pgd": {"steps": 4}, "square": {"queries": 8}},
    )


@pytest.fixture
def memory(monkeypatch):
    """Every evaluation of a target passes ``Target.call``: one of more than ``limit["n"]`` images
    raises CUDA's out-of-memory error, as a GPU too small for the batch would."""
    real = Target.call
    limit = {"n": 2, "raised": 0}

    def call(self, name, *args):
        if args[0].shape[0] > limit["n"]:
            limit["raised"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(self, name, *args)

    monkeypatch.setattr(Target, "call", call)
    return limit


def test_oom_halves_the_batch_and_equals_a_run_at_that_batch(tiny_mini, tmp_path, memory):
    from robench.engine.cell import run_cell
    from robench.engine.grid import plan, run_grid

    out = run_grid([_spec(tmp_path / "a.sqlite")], progress=False)
    cells = out["runs"][0]["cells"]
    assert [c["status"] for c in cells] == ["done"] * len(ATTACKS) and memory["raised"] > 0
    with Store(tmp_path / "a.sqlite") as st:
        stored = st.cells().set_index("attack")
        results = {a: st.results(stored.loc[a, "key"]) for a in ATTACKS}
    p = plan(_spec(tmp_path / "b.sqlite"), progress=False)
    for attack in p.attacks:
        row = stored.loc[attack.name]
        # the quick profile's batch of 32 holds all 8 items: 8 and 4 ran out of memory, 2 fits
        assert row["probes"]["batch_size"] == 32 and row["probes"]["batch_size_used"] == 2
        assert row["probes"]["oom_halved"] == 2 and row["flags"]["oom_halved"] == 2
        record, rows = run_cell(p.target, attack, p.items, p.eps, 2)  # batch 2 from the start
        assert record["probes"]["batch_size_used"] == 2 and record["probes"]["oom_halved"] == 0
        assert "oom_halved" not in record["flags"]
        got = results[attack.name][COLUMNS].reset_index(drop=True)
        want = _frame(rows)[COLUMNS]
        assert got.equals(want), attack.name  # per item and ε, bit for bit
        assert row["summary"] == record["summary"]
        assert row["flags"].get("convergence") == record["flags"].get("convergence")
    # and a reader sees it: the report flags every such cell [oom] and explains the code
    from robench.results.report import write_report

    write_report(tmp_path / "a.sqlite", tmp_path / "rep", ot="exact", n_boot=50, plots=False, pdf=False)
    rj = json.loads((tmp_path / "rep" / "report.json").read_text())
    flagged = {c["attack"]: c["flags"] for c in rj["flagged_cells"]}
    assert all("oom" in flagged.get(a, []) for a in ATTACKS), flagged
    assert "oom" in rj["flag_legend"]


def _frame(rows):
    import pandas as pd

    return pd.DataFrame(rows).sort_values(["eps", "item"]).reset_index(drop=True)


def test_oom_at_batch_size_1_fails_the_cell_with_a_clear_message(tiny_mini, tmp_path, memory):
    from robench.engine.grid import run_grid

    memory["n"] = 0  # nothing fits
    spec = _spec(tmp_path / "a.sqlite")
    spec.attacks = ["fgsm"]
    out = run_grid([spec], progress=False)
    cell = out["runs"][0]["cells"][0]
    assert cell["status"] == "failed"
    assert "out of memory on cpu even at batch size 1" in cell["error"] and "'fgsm' on ssim" in cell["error"]
    assert "\n" not in cell["error"]
    with Store(tmp_path / "a.sqlite") as st:
        failed = st.cells(status="failed")
    assert len(failed) == 1 and failed.iloc[0]["error"] == cell["error"]


def test_halving_rewinds_the_rng_and_retries_only_out_of_memory():
    draws, sizes = {}, []

    def body(start, stop):
        sizes.append(stop - start)
        x = torch.rand(stop - start)  # the failed try draws too: the rewind must undo it
        if stop - start > 3:
            raise RuntimeError("CUDA error: out of memory")
        draws.update({i: float(v) for i, v in zip(range(start, stop), x)})

    torch.manual_seed(0)
    assert halving_batches(10, 8, body, "cpu") == (2, 2)
    assert sizes == [8, 4, 2, 2, 2, 2, 2]
    torch.manual_seed(0)
    fresh = torch.cat([torch.rand(2) for _ in range(5)])
    assert [draws[i] for i in range(10)] == fresh.tolist()

    calls = []

    def broken(start, stop):
        calls.append(stop - start)
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        halving_batches(4, 4, broken)
    assert calls == [4]  # a bug is not retried
    assert is_oom(torch.cuda.OutOfMemoryError("x")) and is_oom(RuntimeError("MPS backend out of memory"))
    assert not is_oom(RobenchError("out of memory")) and not is_oom(ValueError("out of memory"))
    with pytest.raises(OutOfMemory, match="at batch size 1"):
        halving_batches(3, 2, lambda a, b: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("no")), what="test")
