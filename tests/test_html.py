"""index.html in a real browser: Debian's chromium, headless, loads the report from disk; the
page's #selftest (plain JS in the page) reports the leaderboard's rows and its order under every
column's sort, every image's decode, and the resources loaded; a screenshot is taken."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _browser(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # --no-sandbox: CI runs as root; --disable-gpu/--no-first-run: headless on a bare machine
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory, robench_home):
    import os

    from robench.core.config import RunConfig
    from robench.data.mini import build_mini
    from robench.engine.grid import run_config
    from robench.results.report import write_report

    os.environ["ROBENCH_HOME"] = str(robench_home)
    build_mini(size=32, crops_per_source=1, seed=0, progress=False)
    folder = tmp_path_factory.mktemp("html")
    store = folder / "s.sqlite"
    common = {
        "eps": [2, 8],
        "store": str(store),
        "dataset_options": {"size": 32, "crops_per_source": 1},
        "attack_params": {"pgd": {"steps": 3}},
    }
    run_config(
        RunConfig.from_dict(
            {"targets": "ssim,psnr,ms-ssim", "attacks": "fgsm,pgd", "n": 16, "directions": "up,mos-split", **common}
        ),
        progress=False,
    )
    run_config(
        RunConfig.from_dict(
            {
                "targets": "ssim",
                "defenses": "flip",
                "attacks": "fgsm",
                "n": 16,
                "attack_params": {"fgsm": {"eot": 2}},
                **{k: v for k, v in common.items() if k != "attack_params"},
            }
        ),
        progress=False,
    )
    out = folder / "report"
    write_report(store, out, n_boot=50, pdf=False)
    return store, out


def test_index_html_is_self_contained(report):
    _, out = report
    text = (out / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//)""", text)  # no CDN, no remote anything
    assert "<script>" in text and "<style>" in text
    assert "Adversarial examples" in text and "data:image/png;base64," in text
    assert text.count("<div class='item'>") >= 4  # the gallery: kept items of the cells (default: top)


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium; apt-get install chromium)"
)
def test_index_html_in_headless_chromium(report, tmp_path):
    from robench.results.records import make_records

    store, out = report
    url = (out / "index.html").resolve().as_uri()
    res = _browser("--virtual-time-budget=10000", "--dump-dom", url + "#selftest")
    m = re.search(r'<pre id="selftest-result">(.*?)</pre>', res.stdout, re.S)
    assert m, f"no self-test result in the DOM (chromium rc {res.returncode}: {res.stderr[-500:]})"
    st = json.loads(m.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"'))
    # one leaderboard row per target × defence of the store
    recs = make_records(store, n_boot=20)
    want = {f"{r['model']['target']} | {r['defense']['name']}" for r in recs}
    assert sorted(st["rows"]) == sorted(want) and len(st["rows"]) == 4
    # sorting reorders the rows: the clean-SROCC column sorts as the records' values do
    clean = {f"{r['model']['target']} | {r['defense']['name']}": r["evaluations"][0]["clean"]["value"] for r in recs}
    col = next(s for s in st["sorted"] if s["header"] == "clean SROCC")
    assert col["asc"] == sorted(clean, key=lambda k: (clean[k], k)) or [clean[k] for k in col["asc"]] == sorted(
        clean.values()
    )
    assert [clean[k] for k in col["desc"]] == sorted(clean.values(), reverse=True)
    assert any(s["asc"] != s["desc"] for s in st["sorted"])
    # every image decodes; nothing is requested outside the file
    assert st["images"] > 4 and st["broken"] == []
    folder = out.resolve().as_uri()
    assert all(r.startswith("data:") or r.startswith(folder) for r in st["resources"]), st["resources"]
    shot = tmp_path / "index.png"
    res = _browser("--hide-scrollbars", "--window-size=1400,1800", f"--screenshot={shot}", url)
    assert shot.is_file() and shot.stat().st_size > 10_000, res.stderr[-500:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_leaderboard_marks_a_row_only_when_its_ranking_figure_is_flagged():
    """A flagged cell shows its codes; the row is 'unreliable' only when its worst case under the
    ranking attack (the figure it is sorted by) comes from a flagged evaluation."""
    from robench.results.html import leaderboard

    def ev(key, attack, value, flags, details=None):
        return {
            "cell_key": key,
            "attack": attack,
            "direction": "mos-split",
            "dataset": {"kind": "pairs"},
            "clean": {"value": 0.8, "ci": None},
            "attacked": [{"eps": 4.0, "value": value, "ci": None}],
            "flags": flags,
            "flag_details": details or {},
        }

    def rec(target, evals):
        flags = sorted({f for e in evals for f in e["flags"]})
        return {
            "model": {"target": target, "arch": target},
            "defense": {"name": "none"},
            "evaluations": evals,
            "flags": flags,
            "unreliable": bool(flags),
        }

    strength = {"below_reference": True, "strength": {"fraction": 0.93}}
    ok_row = rec("a", [ev("k1", "pgd", -0.5, []), ev("k2", "uap", 0.6, ["nc"], strength)])  # flag off the worst
    bad_row = rec("b", [ev("k3", "pgd", -0.7, ["nc"], strength), ev("k4", "fgsm", 0.1, [])])
    html = leaderboard([ok_row, bad_row], [], [], [])
    rows = html.split("<tbody>")[1].split("</tr>")
    a, b = next(x for x in rows if ">a<" in x), next(x for x in rows if ">b<" in x)
    assert "unreliable" not in a and "nc 0.93" in a  # the flagged cell carries its code and fraction
    assert "unreliable" in b and "flagged" in b
    # a masked target: its gradient attack cannot rank it, its score-only attack does
    masked = rec("m", [ev("k5", "pgd", 0.79, ["mask"]), ev("k6", "square", 0.2, [])])
    only = rec("o", [ev("k7", "fgsm", 0.8, ["mask"])])
    rows = leaderboard([masked, only], [], [], []).split("<tbody>")[1].split("</tr>")
    m, o = next(x for x in rows if ">m<" in x), next(x for x in rows if ">o<" in x)
    assert "<b>0.2" in m and "unreliable" not in m and "mask" in m
    assert "unreliable" in o  # nothing but masked figures: no robustness figure to rank it by
