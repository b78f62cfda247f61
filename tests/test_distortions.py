from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robench.data import distortions as D
from robench.core.errors import UnknownNameError


def _images():
    """Three natural crops of different content (the distortion tests need real structure)."""
    from skimage import data

    return [data.astronaut()[60:124, 180:244], data.coffee()[100:164, 300:364], data.chelsea()[80:144, 150:214]]


IMAGES = _images()


def psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return np.inf if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_table_has_25_types_5_levels_from_the_csv():
    import csv
    from importlib import resources

    assert sorted(D.DISTORTIONS) == list(range(1, 26))
    rows = list(csv.DictReader(resources.files("robench.data").joinpath("kadid10k_cell_mos.csv").open()))
    assert len(rows) == 125
    for row in rows:
        d = D.DISTORTIONS[int(row["type_id"])]
        lv = int(row["level"])
        assert d.function == row["matlab_function"]
        assert d.params[lv - 1] == float(row["matlab_parameter"])
        assert d.mos_mean[lv - 1] == float(row["mos_mean"])


@pytest.mark.parametrize("tid", sorted(D.DISTORTIONS))
def test_every_level_gives_valid_image_of_same_size(tid):
    img = IMAGES[0][:40, :56]  # non-square on purpose
    for level in range(1, 6):
        out = D.apply(img, tid, level, seed=3)
        assert out.shape == img.shape and out.dtype == np.uint8


@pytest.mark.parametrize("tid", [t for t, d in D.DISTORTIONS.items() if d.monotone])
def test_psnr_falls_with_level(tid):
    for k, img in enumerate(IMAGES):
        ps = [psnr(img, D.apply(img, tid, lv, seed=k)) for lv in range(1, 6)]
        assert all(a >= b for a, b in zip(ps, ps[1:])), (D.DISTORTIONS[tid].name, ps)
        assert ps[0] > ps[-1]


def test_non_monotone_types_are_the_documented_ones():
    assert {d.name for d in D.DISTORTIONS.values() if not d.monotone} == {
        "color_diffusion",
        "mean_shift",
        "contrast_change",
    }
    for img in IMAGES:
        # mean shift and contrast change pass through the identity at level 3
        for name in ("mean_shift", "contrast_change"):
            ps = [psnr(img, D.apply(img, name, lv)) for lv in range(1, 6)]
            assert np.argmax(ps) == 2
        # colour diffusion falls, then plateaus once the amplified chroma clips at the gamut
        ps = [psnr(img, D.apply(img, "color_diffusion", lv)) for lv in range(1, 6)]
        assert ps[0] > ps[1] > max(ps[2:]), ps


@pytest.mark.parametrize("tid", sorted(D.DISTORTIONS))
def test_same_seed_same_bytes(tid):
    img = IMAGES[1]
    a = D.apply(img, tid, 4, seed=11)
    b = D.apply(img, tid, 4, seed=11)
    assert a.tobytes() == b.tobytes()


def test_random_types_depend_on_seed():
    img = IMAGES[1]
    for name in ("white_noise", "impulse_noise", "color_block", "jitter", "motion_blur"):
        assert D.apply(img, name, 4, seed=1).tobytes() != D.apply(img, name, 4, seed=2).tobytes(), name


def test_lookup_by_id_and_names():
    d = D.get_distortion(10)
    assert D.get_distortion("jpeg") is d
    assert D.get_distortion("JPEG") is d
    assert D.get_distortion("imcompressjpeg") is d
    assert D.get_distortion("10") is d
    with pytest.raises(UnknownNameError, match="did you mean"):
        D.get_distortion("jpge")


def test_bad_level_and_bad_image():
    with pytest.raises(ValueError, match="level"):
        D.apply(IMAGES[0], 1, 6)
    with pytest.raises(ValueError, match="H×W×3"):
        D.apply(IMAGES[0][..., 0], 1, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        D.apply(np.full((8, 8, 3), 2.0), 1, 1)


def test_float_input_matches_uint8_input():
    img = IMAGES[2]
    assert D.apply(img, "gaussian_blur", 3).tobytes() == D.apply(img / 255.0, "gaussian_blur", 3).tobytes()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(8, 40),
    w=st.integers(8, 40),
    tid=st.integers(1, 25),
    level=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
    fill=st.sampled_from(["random", "black", "white", "flat"]),
)
def test_fuzz_any_size_and_content(h, w, tid, level, seed, fill):
    rng = np.random.default_rng(seed)
    img = {
        "random": lambda: rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "black": lambda: np.zeros((h, w, 3), np.uint8),
        "white": lambda: np.full((h, w, 3), 255, np.uint8),
        "flat": lambda: np.full((h, w, 3), 97, np.uint8),
    }[fill]()
    out = D.apply(img, tid, level, seed=seed)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
