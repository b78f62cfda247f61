"""The 25 KADID-10k distortion types at their 5 levels, in Python.

KADID-10k (Lin, Hosu, Saupe, QoMEX 2019) generated its distortions with MATLAB functions whose
names and per-level parameters are listed in ``kadid10k_cell_mos.csv`` (copied from the
project's shared data; see ``PROVENANCE`` below). The MATLAB source is not distributed with
the dataset, so each function here is robench's reimplementation of what the generator name and
parameter describe, written on numpy/scipy/Pillow/scikit-image. Where the semantics are a
robench reading rather than a documented fact, the function's docstring says so.

Contract: ``apply(image, kind, level, seed)`` takes an ``H×W×3`` uint8 array (or float in
[0,1]) and returns an ``H×W×3`` uint8 array of the same size. Randomness comes only from the
``numpy.random.Generator`` built from ``seed``, so the same seed gives identical bytes.

Spatial parameters (blur sigma, shift in pixels) keep their per-pixel meaning. Parameters that
count objects placed on a 512×384 KADID image (colour blocks, displaced patches) keep their
count, and the object size is scaled by ``sqrt(area / (512·384))`` so that the covered
fraction of the image matches KADID at any image size.
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from importlib import resources
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.interpolate import PchipInterpolator
from skimage import color as skcolor
from skimage.restoration import denoise_tv_chambolle

from robench.core.errors import UnknownNameError

PROVENANCE = (
    "KADID-10k per-cell mean/std MOS over its 81 references, with the MATLAB generator name and "
    "parameter of each cell (Lin, Hosu, Saupe: 'KADID-10k: A Large-scale Artificially Distorted "
    "IQA Database', QoMEX 2019); table supplied with the robench project as "
    "shared/data/kadid10k_cell_mos.csv and copied verbatim into the package."
)
KADID_AREA = 512 * 384  # KADID-10k reference size, for object-count distortions

Float = np.ndarray  # H×W×3 float64 in [0, 1]


# --------------------------------------------------------------------------------------------
# helpers


def _to_float(img: np.ndarray) -> Float:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {img.shape}")
    if img.size == 0:
        raise ValueError(f"expected a non-empty H×W×3 RGB image, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    out = img.astype(np.float64)
    if out.size and (out.min() < 0 or out.max() > 1 or not np.isfinite(out).all()):
        raise ValueError("float image must be finite and in [0, 1]")
    return out


def to_uint8(img: Float) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _per_channel(fn: Callable[[np.ndarray], np.ndarray], img: Float) -> Float:
    return np.stack([fn(img[..., c]) for c in range(3)], axis=-1)


def _convolve(img: Float, kernel: np.ndarray) -> Float:
    kernel = kernel / kernel.sum()
    return _per_channel(lambda ch: ndimage.convolve(ch, kernel, mode="nearest"), img)


def _object_scale(img: Float) -> float:
    return float(np.sqrt(img.shape[0] * img.shape[1] / KADID_AREA))


def _lab2rgb(lab: np.ndarray) -> Float:
    # Out-of-gamut Lab (amplified chroma) is clipped by skimage with a warning per call; the
    # clipping is the intended behaviour here, so the warning is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return skcolor.lab2rgb(lab)


def _quadratic_curve(x: np.ndarray, mid: float) -> np.ndarray:
    """The quadratic through (0,0), (0.5, mid), (1,1): ``x + 2(2·mid − 1)·x(1 − x)``."""
    return x + 2.0 * (2.0 * mid - 1.0) * x * (1.0 - x)


def _encode_decode(img: Float, fmt: str, **save_kw) -> Float:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format=fmt, **save_kw)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


# --------------------------------------------------------------------------------------------
# the 25 generators, in KADID order. Signature: (img float, param, rng) -> float (unclipped ok)


def imblurgauss(img: Float, sigma: float, rng: np.random.Generator) -> Float:
    """Gaussian blur with standard deviation ``sigma`` pixels."""
    return _per_channel(lambda ch: ndimage.gaussian_filter(ch, sigma, mode="nearest", truncate=3.0), img)


def _disk_kernel(radius: float, supersample: int = 16) -> np.ndarray:
    """Pixel-area coverage of a disk (what MATLAB's fspecial('disk') approximates)."""
    r = int(np.ceil(radius - 0.5))
    n = 2 * r + 1
    sub = (np.arange(n * supersample) + 0.5) / supersample - (r + 0.5)
    yy, xx = np.meshgrid(sub, sub, indexing="ij")
    inside = (xx**2 + yy**2) <= radius**2
    return inside.reshape(n, supersample, n, supersample).mean(axis=(1, 3))


def imblurlens(img: Float, radius: float, rng: np.random.Generator) -> Float:
    """Lens (defocus) blur: convolution with a uniform disk of the given radius."""
    return _convolve(img, _disk_kernel(radius))


def _line_kernel(length: float, angle: float, supersample: int = 8) -> np.ndarray:
    """Anti-aliased line of ``length`` pixels at ``angle`` radians (fspecial('motion') style)."""
    half = max(length, 1.0) / 2.0
    r = int(np.ceil(half)) + 1
    n = 2 * r + 1
    k = np.zeros((n, n))
    ts = np.linspace(-half, half, int(np.ceil(2 * half * supersample)) + 1)
    xs, ys = r + ts * np.cos(angle), r - ts * np.sin(angle)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(k, (y0 + dy, x0 + dx), w)
    return k


def imblurmotion(img: Float, length: float, rng: np.random.Generator) -> Float:
    """Linear motion blur of ``length`` pixels in a random direction (seeded)."""
    angle = rng.uniform(0.0, np.pi)
    return _convolve(img, _line_kernel(length, angle))


def imcolordiffuse(img: Float, amount: float, rng: np.random.Generator) -> Float:
    """Colour diffusion: the Lab chroma (a, b) is blurred (σ = 1.5·amount + 2) and amplified by
    ``amount``; lightness is kept. [robench reading: matches the steep KADID MOS drop between
    levels 1 and 2, which a chroma blur alone would not produce]."""
    lab = skcolor.rgb2lab(img)
    sigma = 1.5 * amount + 2.0
    for c in (1, 2):
        lab[..., c] = ndimage.gaussian_filter(lab[..., c], sigma, mode="nearest") * amount
    return _lab2rgb(lab)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def imcolorshift(img: Float, amount: float, rng: np.random.Generator) -> Float:
    """Colour shift: the green channel is displaced by ``amount`` pixels in a random direction
    and blended in proportionally to a smoothed edge-strength map (misregistered colour planes
    show at edges)."""
    gray = img @ np.array([0.2989, 0.5870, 0.1140])
    # np.gradient needs two samples along an axis: a 1-pixel-high/wide image has no edges across it
    gy, gx = (np.gradient(gray, axis=a) if gray.shape[a] > 1 else np.zeros_like(gray) for a in (0, 1))
    edges = _minmax(ndimage.gaussian_filter(np.hypot(gx, gy), 4.0))
    edges = _minmax(np.clip(edges, 0.1, 1.0))
    lo, hi = np.percentile(edges, [1, 99])
    edges = _minmax(np.clip(edges, lo, hi))
    direction = rng.normal(size=2)
    dy, dx = np.round(direction / np.linalg.norm(direction) * amount).astype(int)
    shifted = ndimage.shift(img[..., 1], (dy, dx), order=0, mode="reflect")
    out = img.copy()
    out[..., 1] = edges * shifted + (1.0 - edges) * img[..., 1]
    return out


def imcolorquantize(img: Float, n_colors: float, rng: np.random.Generator) -> Float:
    """Colour quantisation to ``n_colors`` palette colours (median cut) with Floyd–Steinberg
    dithering, as MATLAB's rgb2ind does by default."""
    pil = Image.fromarray(to_uint8(img))
    q = pil.quantize(colors=int(n_colors), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    return np.asarray(q.convert("RGB"), dtype=np.float64) / 255.0


def imcolorsaturate(img: Float, factor: float, rng: np.random.Generator) -> Float:
    """HSV saturation multiplied by ``factor`` (hue and value kept). In HSV every channel is
    ``V·(1 − S·k_c)`` with ``k_c`` set by the hue, so scaling S by ``factor`` is exactly
    ``c' = V − factor·(V − c)``; a negative factor pushes colours past grey to the complementary
    hue (clipped to [0,1])."""
    v = img.max(axis=2, keepdims=True)
    return v - factor * (v - img)


def imsaturate(img: Float, amount: float, rng: np.random.Generator) -> Float:
    """Lab saturation: chroma (a, b) multiplied by ``amount``."""
    lab = skcolor.rgb2lab(img)
    lab[..., 1:] *= amount
    return _lab2rgb(lab)


def imcompressjp2k(img: Float, ratio: float, rng: np.random.Generator) -> Float:
    """JPEG 2000 at compression ratio ``ratio`` (Pillow's OpenJPEG encoder, irreversible 9/7)."""
    return _encode_decode(img, "JPEG2000", quality_mode="rates", quality_layers=[float(ratio)], irreversible=True)


def imcompressjpeg(img: Float, quality: float, rng: np.random.Generator) -> Float:
    """Baseline JPEG at the IJG quality factor ``quality`` (Pillow's libjpeg encoder)."""
    return _encode_decode(img, "JPEG", quality=int(quality))


def imnoisegauss(img: Float, var: float, rng: np.random.Generator) -> Float:
    """White Gaussian noise of variance ``var`` in RGB (MATLAB ``imnoise(I,'gaussian',0,var)``)."""
    return img + rng.normal(0.0, np.sqrt(var), img.shape)


def imnoisecolorcomp(img: Float, var: float, rng: np.random.Generator) -> Float:
    """White Gaussian noise of variance ``var`` added to each YCbCr component (MATLAB's
    studio-swing YCbCr scaled to [0,1]), then back to RGB."""
    ycc = skcolor.rgb2ycbcr(img) / 255.0
    ycc = ycc + rng.normal(0.0, np.sqrt(var), ycc.shape)
    return skcolor.ycbcr2rgb(ycc * 255.0)


def imnoiseimpulse(img: Float, density: float, rng: np.random.Generator) -> Float:
    """Salt-and-pepper noise: each sample set to 0 or 1 with probability ``density/2`` each
    (MATLAB ``imnoise(I,'salt & pepper',d)`` applies it per sample)."""
    u = rng.random(img.shape)
    out = img.copy()
    out[u < density / 2] = 0.0
    out[u > 1.0 - density / 2] = 1.0
    return out


def imnoisemultiplicative(img: Float, var: float, rng: np.random.Generator) -> Float:
    """Speckle noise ``I + n·I`` with ``n`` uniform, zero mean, variance ``var`` (MATLAB
    ``imnoise(I,'speckle',var)``)."""
    a = np.sqrt(3.0 * var)
    return img + img * rng.uniform(-a, a, img.shape)


def imdenoise(img: Float, var: float, rng: np.random.Generator) -> Float:
    """Denoising artefacts: white Gaussian noise of variance ``var`` followed by a total-variation
    denoiser whose strength follows the noise level. [robench reading: KADID names the
    generator but not its denoiser]."""
    noisy = np.clip(img + rng.normal(0.0, np.sqrt(var), img.shape), 0.0, 1.0)
    return denoise_tv_chambolle(noisy, weight=np.sqrt(var), channel_axis=-1)


def _tone_curve(img: Float, mid: float) -> Float:
    """Apply the same quadratic tone curve to RGB and to Lab lightness, mixed 2:1 (so hue
    shifts of a pure RGB curve are damped)."""
    rgb = _quadratic_curve(img, mid)
    lab = skcolor.rgb2lab(img)
    lab[..., 0] = 100.0 * np.clip(_quadratic_curve(lab[..., 0] / 100.0, mid), 0.0, 1.0)
    return (2.0 * np.clip(rgb, 0.0, 1.0) + np.clip(_lab2rgb(lab), 0.0, 1.0)) / 3.0


def imbrighten(img: Float, amount: float, rng: np.random.Generator) -> Float:
    """Non-linear brightening: tone curve through (0,0), (0.5, 0.5 + amount/2), (1,1)."""
    return _tone_curve(img, 0.5 + 0.5 * amount)


def imdarken(img: Float, amount: float, rng: np.random.Generator) -> Float:
    """Non-linear darkening: tone curve through (0,0), (0.5, 0.5 − amount/2), (1,1)."""
    return _tone_curve(img, 0.5 - 0.5 * amount)


def immeanshift(img: Float, amount: float, rng: np.random.Generator) -> Float:
    """Mean shift: ``amount`` added to every sample (level 3 is the identity)."""
    return img + amount


def imjitter(img: Float, amount: float, rng: np.random.Generator) -> Float:
    """Jitter: five passes of a random per-pixel displacement field with std ``amount`` pixels,
    resampled with cubic interpolation."""
    h, w, _ = img.shape
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    out = img
    for _ in range(5):
        sy, sx = rng.normal(0.0, amount, (2, h, w))
        coords = np.stack([yy - sy, xx - sx])
        out = _per_channel(lambda ch, c=coords: ndimage.map_coordinates(ch, c, order=3, mode="reflect"), out)
    return out


def imnoneccentricity(img: Float, count: float, rng: np.random.Generator) -> Float:
    """Non-eccentricity patches: ``count`` 16×16 patches (scaled to the image size) each copied
    to a randomly displaced position up to 16 px (scaled) away."""
    h, w, _ = img.shape
    s = _object_scale(img)
    p = max(2, int(round(16 * s)))
    radius = max(1, int(round(16 * s)))
    out = img.copy()
    for _ in range(int(count)):
        y = int(rng.integers(0, max(1, h - p + 1)))
        x = int(rng.integers(0, max(1, w - p + 1)))
        patch = out[y : y + p, x : x + p].copy()
        ty = int(np.clip(y + rng.integers(-radius, radius + 1), 0, h - p))
        tx = int(np.clip(x + rng.integers(-radius, radius + 1), 0, w - p))
        out[ty : ty + p, tx : tx + p] = patch
    return out


def impixelate(img: Float, amount: float, rng: np.random.Generator) -> Float:
    """Pixelation: box-downscale by ``z = 0.95 − amount^0.6`` and nearest-neighbour upscale back."""
    h, w, _ = img.shape
    z = 0.95 - amount**0.6
    small = (max(1, int(round(w * z))), max(1, int(round(h * z))))
    pil = Image.fromarray(to_uint8(img)).resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(pil, dtype=np.float64) / 255.0


def imnoisequantize(img: Float, levels: float, rng: np.random.Generator) -> Float:
    """Quantisation of each channel to ``levels`` uniform levels between its min and max, each
    bin mapped to its centre. [robench reading: MATLAB's multithresh (multi-level Otsu) is
    impractical at 20 levels; uniform thresholds give the same banding artefact]."""
    n = int(levels)
    out = np.empty_like(img)
    for c in range(3):
        ch = img[..., c]
        lo, hi = ch.min(), ch.max()
        if hi <= lo:
            out[..., c] = ch
            continue
        step = (hi - lo) / n
        idx = np.clip(np.floor((ch - lo) / step), 0, n - 1)
        out[..., c] = lo + (idx + 0.5) * step
    return out


def imcolorblock(img: Float, count: float, rng: np.random.Generator) -> Float:
    """Colour blocks: ``count`` uniformly coloured 32×32 squares (scaled to the image size) at
    random positions."""
    h, w, _ = img.shape
    p = max(2, int(round(32 * _object_scale(img))))
    out = img.copy()
    for _ in range(int(count)):
        y = int(rng.integers(0, max(1, h - p + 1)))
        x = int(rng.integers(0, max(1, w - p + 1)))
        out[y : y + p, x : x + p] = rng.random(3)
    return out


def imsharpenHi(img: Float, amount: float, rng: np.random.Generator) -> Float:  # noqa: N802 (KADID name)
    """Over-sharpening: unsharp masking of Lab lightness, ``L + amount·(L − G_3(L))`` (MATLAB
    imsharpen's Amount with a radius-3 Gaussian), colour kept."""
    lab = skcolor.rgb2lab(img)
    L = lab[..., 0]
    lab[..., 0] = np.clip(L + amount * (L - ndimage.gaussian_filter(L, 3.0, mode="nearest")), 0.0, 100.0)
    return _lab2rgb(lab)


def imcontrastc(img: Float, amount: float, rng: np.random.Generator) -> Float:
    """Contrast change: a monotone tone curve through (0,0), (0.3, 0.25 − a/4), (0.5, 0.5),
    (0.7, 0.75 + a/4), (1,1); positive ``amount`` raises contrast, negative lowers it."""
    xs = [0.0, 0.3, 0.5, 0.7, 1.0]
    ys = [0.0, 0.25 - amount / 4, 0.5, 0.75 + amount / 4, 1.0]
    return PchipInterpolator(xs, ys)(img)


# --------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class DistortionType:
    id: int
    name: str  # robench name
    kadid_name: str
    function: str  # the KADID MATLAB generator name
    params: tuple[float, ...]  # per level 1..5
    mos_mean: tuple[float, ...]
    mos_std: tuple[float, ...]
    fn: Callable[[Float, float, np.random.Generator], Float]
    # False where stronger levels are not a monotone worsening of fidelity (tone/shift types)
    monotone: bool = True


_ROBENCH_NAMES = {
    1: "gaussian_blur",
    2: "lens_blur",
    3: "motion_blur",
    4: "color_diffusion",
    5: "color_shift",
    6: "color_quantization",
    7: "saturation_hsv",
    8: "saturation_lab",
    9: "jpeg2000",
    10: "jpeg",
    11: "white_noise",
    12: "white_noise_ycbcr",
    13: "impulse_noise",
    14: "multiplicative_noise",
    15: "denoise",
    16: "brighten",
    17: "darken",
    18: "mean_shift",
    19: "jitter",
    20: "non_eccentricity_patch",
    21: "pixelate",
    22: "quantization",
    23: "color_block",
    24: "high_sharpen",
    25: "contrast_change",
}
# Types whose fidelity to the reference is not monotone in level, and why (the others are
# tested to lose PSNR with every level):
NON_MONOTONE = {
    4: "chroma is amplified by the level's amount, so from level 3 on the colours clip at the sRGB gamut "
    "and PSNR plateaus (KADID's own MOS plateaus there too: 1.76, 1.61, 1.39)",
    18: "the shift passes through the identity at level 3 (+0.15 … −0.15)",
    25: "the contrast parameter passes through the identity at level 3 (+0.3 … −0.6)",
}


def _load_table() -> dict[int, DistortionType]:
    rows: dict[int, list[dict[str, str]]] = {}
    text = resources.files("robench.data").joinpath("kadid10k_cell_mos.csv").read_text()
    for row in csv.DictReader(io.StringIO(text)):
        rows.setdefault(int(row["type_id"]), []).append(row)
    table = {}
    for tid, rs in sorted(rows.items()):
        rs.sort(key=lambda r: int(r["level"]))
        if [int(r["level"]) for r in rs] != [1, 2, 3, 4, 5]:
            raise RuntimeError(f"kadid10k_cell_mos.csv: type {tid} does not have levels 1..5")
        fname = rs[0]["matlab_function"]
        table[tid] = DistortionType(
            id=tid,
            name=_ROBENCH_NAMES[tid],
            kadid_name=rs[0]["kadid_name"],
            function=fname,
            params=tuple(float(r["matlab_parameter"]) for r in rs),
            mos_mean=tuple(float(r["mos_mean"]) for r in rs),
            mos_std=tuple(float(r["mos_std"]) for r in rs),
            fn=globals()[fname],
            monotone=tid not in NON_MONOTONE,
        )
    return table


DISTORTIONS: dict[int, DistortionType] = _load_table()
_ALIASES = {}
for _d in DISTORTIONS.values():
    for _k in (_d.name, _d.kadid_name, _d.function, str(_d.id)):
        _ALIASES[_k.lower()] = _d.id


def get_distortion(key: int | str) -> DistortionType:
    """Look a distortion up by id (1–25), robench name, KADID name or MATLAB function name."""
    if isinstance(key, (int, np.integer)) and int(key) in DISTORTIONS:
        return DISTORTIONS[int(key)]
    k = str(key).strip().lower()
    if k in _ALIASES:
        return DISTORTIONS[_ALIASES[k]]
    import difflib

    close = difflib.get_close_matches(k, list(_ALIASES), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownNameError(f"unknown distortion {key!r}{hint} (ids 1-25 or names like 'gaussian_blur')")


def apply(image: np.ndarray, kind: int | str, level: int, seed: int | np.random.SeedSequence = 0) -> np.ndarray:
    """Distort ``image`` (H×W×3 uint8 or float in [0,1]) with KADID type ``kind`` at ``level``
    (1–5). Returns H×W×3 uint8; the same seed gives identical bytes."""
    d = get_distortion(kind)
    if int(level) not in (1, 2, 3, 4, 5):
        raise ValueError(f"level must be 1..5, got {level!r}")
    img = _to_float(image)
    rng = np.random.default_rng(seed)
    out = d.fn(img, d.params[int(level) - 1], rng)
    if out.shape != img.shape:  # a generator bug, not user input
        raise RuntimeError(f"{d.name} changed the image size {img.shape} -> {out.shape}")
    return to_uint8(out)
