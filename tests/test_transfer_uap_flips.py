"""Kept adversarial images and the N×N transfer matrix, the universal perturbation, and 2AFC
decision flips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robench.core.errors import RobenchError


def _run(store, models, attacks="pgd,fgsm", directions="up,mos-split", keep=True, n=8):
    from robench.core.config import RunConfig
    from robench.engine.grid import run_config

    cfg = RunConfig.from_dict(
        {
            "targets": models,
            "attacks": attacks,
            "eps": [4, 8],
            "n": n,
            "store": str(store),
            "directions": directions,
            "keep_images": keep,
            "dataset_options": {"size": 32, "crops_per_source": 1},
            "attack_params": {"pgd": {"steps": 3}} if "pgd" in attacks else {},
        }
    )
    return run_config(cfg, progress=False)


def test_transfer_matrix_diagonal_equals_the_white_box_cells(tmp_path, tiny_mini):
    from robench.engine.images import images_folder, load_image
    from robench.engine.store import Store
    from robench.engine.transfer import transfer
    from robench.results.report import write_report

    store = tmp_path / "s.sqlite"
    _run(store, "ssim,psnr")
    with Store(store) as s:
        keys = list(s.cells()["key"])
        assert keys and all(s.has_images(k) for k in keys)
        row = s.results(keys[0]).iloc[0]
    img = load_image(images_folder(store), row["image"])
    assert img.shape[0] == 3 and img.dtype == torch.float32
    out = transfer(store, ["ssim", "psnr"], ["ssim", "psnr", "ms-ssim"], progress=False)
    assert {p["status"] for p in out["pairs"]} == {"done"} and len(out["pairs"]) == 4 * 2 * 3
    with Store(store) as s:
        cells = s.cells().set_index("key")
        for key, cell in cells.iterrows():
            res = s.results(key).set_index(["item", "eps"])
            tr = s.db.execute(
                "SELECT item, eps, clean_score, score FROM transfer_rows WHERE source_key=? AND to_target=?",
                (key, cell["target"]),
            ).fetchall()
            assert len(tr) == len(res)
            for item, eps, clean, score in tr:  # the diagonal: the white-box cell's own numbers
                assert score == pytest.approx(res.loc[(item, eps), "score"], rel=1e-6, abs=1e-6)
                assert clean == pytest.approx(res.loc[(item, eps), "clean_score"], rel=1e-6, abs=1e-6)
    again = transfer(store, ["ssim", "psnr"], ["ssim", "psnr", "ms-ssim"], progress=False)  # resumed
    assert {p["status"] for p in again["pairs"]} == {"cached"}
    rep = tmp_path / "report"
    written = write_report(store, rep, n_boot=50, plots=True, pdf=False)
    assert {"transfer-pgd", "transfer-pgd-mos-split"} <= set(written["tables"])
    data = json.loads((rep / "report.json").read_text())
    diag = [x for x in data["transfer"] if x["white_box"] and x["attack"] == "pgd" and x["direction"] == "up"]
    assert diag and all(x["gain_sd"] > 0 for x in diag)
    assert (rep / "plots" / "transfer-pgd-mos-split.png").is_file()
    assert "[" in (rep / "transfer-pgd.md").read_text()  # intervals shown beside the values
    # a tampered image is refused, naming its file
    path = next(images_folder(store).rglob("*.npy"))
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(RobenchError, match="sha256"):
        transfer(store, ["ssim", "psnr"], ["ms-ssim"], progress=False, force=True)


def test_keep_images_reopens_a_cell_stored_without_them_and_transfer_names_what_is_missing(tmp_path, tiny_mini):
    from robench.engine.store import Store
    from robench.engine.transfer import transfer

    store = tmp_path / "s.sqlite"
    first = _run(store, "ssim", attacks="fgsm", directions="up", keep=False)
    with pytest.raises(RobenchError, match="--keep-images"):
        transfer(store, ["ssim"], ["psnr"], progress=False)
    with pytest.raises(RobenchError, match="did you mean"):
        transfer(store, ["sim"], ["psnr"], progress=False)
    again = _run(store, "ssim", attacks="fgsm", directions="up", keep=True)
    assert [c["status"] for c in again["runs"][0]["cells"]] == ["done"]  # computed again, now with images
    with Store(store) as s:
        (key,) = list(s.cells()["key"])
        assert key == first["runs"][0]["cells"][0]["key"] and s.has_images(key)  # the same cell: not keyed


def _brightness_target():
    """q = mean pixel of dist minus that of ref: a universal +ε raises it on every image."""
    from robench.core.target import Target, TargetCard

    class Brightness(Target):
        requires_weights = False

        def __init__(self):
            super().__init__()
            self.card = TargetCard(name="brightness", lower_better=False, score_range=None)

        def score(self, dist, ref):
            return (dist - ref).flatten(1).mean(dim=1) * 10

    return Brightness()


def test_uap_trained_on_train_items_raises_q_on_unseen_test_items(tiny_mini, robench_home):
    from robench.attacks.uap import UAP
    from robench.engine.items import load_items

    target = _brightness_target()
    items = load_items("mini", "test", 8, 0, {"size": 32, "crops_per_source": 1})
    atk = UAP(steps=5, batch=4, tile=8, dataset="mini", dataset_options={"size": 32, "crops_per_source": 1})
    res = atk(target, items.dist, items.ref, eps=[4 / 255])
    gain = target.orient(res.scores[0]) - target.orient(res.clean_scores)
    assert (gain > 0).all()
    info = next(iter(res.probes["trained"].values()))  # recorded with the cell: the patch it applied
    assert info["sha256"] and (robench_home / "attacks" / "uap").is_dir()
    # universal: one perturbation for every image (where the clip to [0, 1] leaves it whole)
    d = res.images[0] - items.dist
    inside = ((items.dist[:2] > 0.05) & (items.dist[:2] < 0.95)).all(dim=0)  # 3×H×W: neither image clipped
    assert inside.sum() > 100 and torch.allclose(d[0][inside], d[1][inside], atol=1e-6)
    # the patch is cached: a second attack loads it (same numbers, no training)
    again = UAP(steps=5, batch=4, tile=8, dataset="mini", dataset_options={"size": 32, "crops_per_source": 1})
    res2 = again(target, items.dist, items.ref, eps=[4 / 255])
    assert torch.equal(res2.scores, res.scores)


def test_flip_rate_against_a_hand_computed_case():
    from robench.results.cells import CellData

    # four triplets; side = which image is attacked; the metric prefers p0 when q_p0 > q_p1
    side = np.array([0, 1, 0, 1])
    judge = np.array([0.1, 0.9, 0.5, 0.3])  # strong agreement on the first two only
    q_other = np.array([0.5, 0.5, 0.5, 0.5])
    q_clean = np.array([0.4, 0.4, 0.6, 0.4])  # decisions: p1, p0, p0, p0
    q_adv = np.array([[0.6, 0.45, 0.7, 0.6]])  # decisions: p0 (flip), p0, p0, p1 (flip)
    c = CellData(
        key="k",
        target="t",
        arch="t",
        defense="none",
        training=None,
        inference=[],
        attack="pgd",
        needs="gradients",
        kind="2afc",
        dataset="d",
        split="test",
        profile="quick",
        seed=0,
        items_sha="x",
        weights_sha="w",
        eps=[8.0],
        item_ids=np.arange(4).astype(str),
        ref_ids=np.arange(4).astype(str),
        sources=None,
        mos=None,
        judge=judge,
        side=side,
        q_other=q_other,
        q_clean=q_clean,
        q_adv=q_adv,
    )
    assert c.flip_rate(0) == pytest.approx(0.5)
    assert c.flip_rate(0, strong=True) == pytest.approx(0.5)  # triplet 0 flipped, triplet 1 not
    c.q_adv = np.array([[0.45, 0.45, 0.7, 0.6]])
    assert c.flip_rate(0, strong=True) == pytest.approx(0.0)
    assert c.flip_rate(0) == pytest.approx(0.25)
