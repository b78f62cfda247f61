"""Reliability audit (issue 8): bad images and bad labels give a clear robench error naming the
file, or a documented conversion; property-based fuzzing of every image and label loader.

Already covered elsewhere (not repeated here): a truncated PNG inside a dataset, grayscale (L) and
RGBA images, a NaN label, a label row naming a missing file (KADID-10k, TID2013), a pair size
mismatch (tests/test_real_datasets.py); every distortion type × level at one size, and a fuzz of
8–40 px sizes and contents (tests/test_distortions.py); degenerate sizes are added below.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import layouts as L
import robench
from robench.data.base import read_rgb
from robench.core.errors import DataError, RobenchError

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _rgb(h=24, w=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encoded(fmt: str, **kw) -> bytes:
    bio = io.BytesIO()
    Image.fromarray(_rgb()).save(bio, fmt, **kw)
    return bio.getvalue()


def _png(path: Path, arr: np.ndarray, bitdepth: int, colortype: int) -> Path:
    """A minimal PNG writer (PIL cannot write 48-bit RGB)."""
    h, w = arr.shape[:2]
    dtype = ">u2" if bitdepth == 16 else "u1"
    raw = b"".join(b"\x00" + arr[y].astype(dtype).tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, bitdepth, colortype, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


# ---------------------------------------------------------------------------------------------
# bad image files → DataError naming the file


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp")])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_png_jpeg_bmp(tmp_path, fmt, ext, keep):
    data = _encoded(fmt)
    p = tmp_path / f"cut.{ext}"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match=rf"{p.name}.*(truncated|cannot identify|Truncated)"):
        read_rgb(p)


@pytest.mark.parametrize("ext", ["png", "jpg", "bmp"])
def test_garbage_bytes_with_image_extension(tmp_path, ext):
    p = tmp_path / f"garbage.{ext}"
    p.write_bytes(b"this is not an image\x00\xff" * 20)
    with pytest.raises(DataError, match=rf"corrupt or unreadable image .*garbage\.{ext}"):
        read_rgb(p)


def test_16bit_grayscale_png_refused(tmp_path):
    p = tmp_path / "gray16.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 65536, (12, 10)).astype(np.uint16)).save(p)
    assert Image.open(p).mode == "I;16"
    with pytest.raises(DataError, match=r"gray16\.png: expected 8 bits per channel, got a 16-bit I;16"):
        read_rgb(p)


def test_48bit_rgb_png_refused_not_truncated_to_8(tmp_path):
    # PIL opens this as mode "RGB" and silently keeps the high byte of each sample
    p = _png(tmp_path / "rgb48.png", np.random.default_rng(0).integers(0, 65536, (6, 7, 3)), 16, 2)
    assert Image.open(p).mode == "RGB"
    with pytest.raises(DataError, match=r"rgb48\.png: expected 8 bits per channel, got a 16-bit RGB"):
        read_rgb(p)


def test_8bit_rgb_bmp_and_png_without_pil_writer_accepted(tmp_path):
    # the 16-bit check must not refuse ordinary 8-bit files (hand-written PNG and PIL's BMP)
    arr = _rgb(5, 6)
    assert np.array_equal(read_rgb(_png(tmp_path / "rgb24.png", arr, 8, 2)), arr)
    Image.fromarray(arr).save(tmp_path / "rgb24.bmp")
    assert np.array_equal(read_rgb(tmp_path / "rgb24.bmp"), arr)


def test_palette_png_expanded_to_rgb_losslessly(tmp_path):
    arr = np.zeros((6, 8, 3), np.uint8)
    arr[:, 4:] = (200, 30, 90)
    Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE, colors=2).save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    assert np.array_equal(read_rgb(tmp_path / "pal.png"), arr)  # documented conversion: palette → RGB


def test_palette_with_transparency_refused(tmp_path):
    im = Image.fromarray(_rgb(6, 8)).convert("P")
    im.save(tmp_path / "palt.png", transparency=0)
    with pytest.raises(DataError, match=r"palt\.png: expected a 3-channel.*'RGBA'"):
        read_rgb(tmp_path / "palt.png")


def test_huge_image_decompression_bomb(tmp_path, monkeypatch):
    p = tmp_path / "huge.png"
    Image.fromarray(_rgb(40, 50)).save(p)  # 2000 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # > 2× the limit: PIL raises (not an OSError)
    with pytest.raises(DataError, match=r"huge\.png is too large to decode.*2000 pixels"):
        read_rgb(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # between 1× and 2×: PIL only warns; image read
    with pytest.warns(Image.DecompressionBombWarning):
        assert read_rgb(p).shape == (40, 50, 3)


# ---------------------------------------------------------------------------------------------
# tiny images → the target's minimum size, before any model code runs


def test_tiny_image_refused_by_target():
    t = robench.load_model("ssim")  # min_size 11
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(RobenchError, match=r"at least 11×11 px .*\(8, 8\)"):
        t(x, x)


def test_tiny_image_refused_on_the_runner_path(tmp_path):
    from robench.core.config import RunSpec
    from robench.engine.grid import run

    e = L.make_kadid(tmp_path / "data")
    for p in (e["base"] / "images").glob("*.png"):  # every image 8×8: loads fine, too small for SSIM
        L.img(p, 0, size=(8, 8))
    ds = robench.load_dataset("kadid10k", split="test", root=tmp_path / "data")
    assert ds[0]["ref"].shape == (3, 8, 8)
    spec = RunSpec(
        model="ssim",
        attacks=["fgsm"],
        dataset="kadid10k",
        eps=[8],
        n=2,
        dataset_options={"root": str(tmp_path / "data")},
        store=tmp_path / "s.sqlite",
    )
    cell = run(spec, progress=False)["cells"][0]  # the harness refuses it before the model sees it
    assert cell["status"] == "failed" and cell["summary"] is None
    assert cell["error"] == "images must be at least 11×11 px for this target, got (8, 8)"


# ---------------------------------------------------------------------------------------------
# bad labels and layouts


def test_2afc_triplet_size_mismatch_names_sizes(tmp_path):
    e = L.make_bapps(tmp_path)
    L.img(e["base"] / "val" / "color" / "p1" / "000002.png", 1, size=(8, 10))
    ds = robench.load_dataset("bapps-2afc", split="val", root=tmp_path, categories=["color"])
    with pytest.raises(DataError, match=r"size mismatch in triplet.*p1 .*000002\.png is 10×8"):
        ds[2]


@pytest.mark.parametrize("value", ["inf", "-inf", "1e999"])
def test_inf_mos_rejected(tmp_path, value):
    e = L.make_kadid(tmp_path)
    text = (e["base"] / "dmos.csv").read_text().splitlines()
    head, first = text[0], text[1].split(",")
    first[2] = value
    (e["base"] / "dmos.csv").write_text("\n".join([head, ",".join(first), *text[2:]]) + "\n")
    with pytest.raises(DataError, match=rf"dmos\.csv: label .* for {first[0]} is not a finite number"):
        robench.load_dataset("kadid10k", split="all", root=tmp_path)


def test_inf_mos_rejected_tid(tmp_path):
    e = L.make_tid(tmp_path)
    lines = (e["base"] / "mos_with_names.txt").read_text().splitlines()
    lines[2] = "inf " + lines[2].split()[1]
    (e["base"] / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"mos_with_names\.txt: label inf .* not a finite number"):
        robench.load_dataset("tid2013", split="all", root=tmp_path)


def _drop_one(name, e):
    """Delete one distorted image a label row names; return its file name."""
    base = e["base"]
    victim = {
        "pipal": lambda: next(base.glob("Distortion_*/A0002_01_*.bmp")),
        "csiq": lambda: base / "dst_imgs" / "blur" / "boston.BLUR.2.png",
        "pieapp": lambda: base / "distorted_images" / "test" / "ref_4" / "distort_4_1.png",
        "pieapp-2afc": lambda: base / "distorted_images" / "train" / "ref_2" / "distort_2_2.png",
        "live": lambda: base / "refimgs" / "ref3.bmp",
        "bapps-2afc": lambda: base / "val" / "color" / "p0" / "000001.png",
    }[name]()
    victim.unlink()
    return victim.name


@pytest.mark.parametrize("name", ["pipal", "csiq", "pieapp", "pieapp-2afc", "live", "bapps-2afc"])
def test_label_row_naming_missing_file_other_loaders(tmp_path, name):
    maker = {
        "pipal": L.make_pipal,
        "csiq": L.make_csiq,
        "pieapp": L.make_pieapp,
        "pieapp-2afc": L.make_pieapp,
        "live": L.make_live,
        "bapps-2afc": L.make_bapps,
    }[name]
    gone = _drop_one(name, maker(tmp_path))
    with pytest.raises(DataError, match="(?i)" + gone.replace(".", r"\.")):  # CSIQ lower-cases names
        robench.load_dataset(name, split="all" if name != "bapps-2afc" else "val", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# property-based: any bytes as an image file


SEEDS = {k: _encoded(k) for k in ("PNG", "JPEG", "BMP", "GIF", "TIFF", "PPM", "TGA", "PCX")}


@st.composite
def image_bytes(draw):
    kind = draw(st.sampled_from(["random", "truncate", "flip", "header"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    i = draw(st.integers(0, 60))  # overwrite header bytes (sizes, bit depths, offsets)
    data[i : i + 4] = draw(st.binary(min_size=4, max_size=4))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning", "ignore:Truncated File Read:UserWarning")
def test_fuzz_read_rgb_any_bytes(tmp_path):
    @FUZZ
    @given(data=image_bytes(), ext=st.sampled_from(["png", "jpg", "bmp"]))
    def check(data, ext):
        p = tmp_path / f"fuzz.{ext}"
        p.write_bytes(data)
        try:
            arr = read_rgb(p)
        except DataError as exc:
            assert str(p) in str(exc)
            return
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3

    check()


def test_fuzz_read_rgb_bomb_header_is_dataerror(tmp_path, monkeypatch):
    # a corrupted header that claims a gigantic size (found by the fuzzer): DataError, not PIL's error
    data = bytearray(SEEDS["BMP"])
    data[18:26] = struct.pack("<ii", 200000, 200000)
    (tmp_path / "claims.bmp").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"claims\.bmp is too large"):
        read_rgb(tmp_path / "claims.bmp")


# ---------------------------------------------------------------------------------------------
# property-based: any label file contents → finite labels or a RobenchError naming the file

LABEL = st.one_of(
    st.floats().map(repr),  # includes nan, inf, -0.0, 1e+308
    st.floats(0, 1).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "NaN",
            "-nan",
            "inf",
            "-inf",
            "Infinity",
            "1e999",
            "-1",
            "0",
            "True",
            "abc",
            "1,5",
            '"2"',
            "1_0",
            "0x10",
            "٣",
            "²",
            "NA",
            "null",
        ]
    ),
    st.text(max_size=6),
)


class Spec:
    def __init__(self, maker, label_file, valid, sep=",", header=None):
        self.maker, self.label_file, self.sep, self.header = maker, label_file, sep, header
        self.valid = valid  # rows of fields; None marks a label slot


TEXT_SPECS = {
    "kadid10k": Spec(
        L.make_kadid,
        "kadid10k/dmos.csv",
        [
            (f"I{r:02d}_{t:02d}_{lv:02d}.png", f"I{r:02d}.png", None, "0.1")
            for r in range(1, 6)
            for t in (1, 2)
            for lv in (1, 2)
        ],
        header="dist_img,ref_img,dmos,var",
    ),
    "tid2013": Spec(
        L.make_tid,
        "tid2013/mos_with_names.txt",
        [(None, f"i{r:02d}_{t:02d}_{lv}.bmp") for r in range(1, 6) for t in (1, 2) for lv in (1, 2, 3)],
        sep=" ",
    ),
    "pipal": Spec(
        L.make_pipal,
        "PIPAL/Train_Label/A0001.txt",
        [(f"A{r:04d}_{t:02d}_{r % 3:02d}.bmp", None) for r in range(1, 6) for t in range(3)],
    ),
    "pieapp": Spec(
        L.make_pieapp,
        "PieAPP_dataset_CVPR_2018/labels/test/ref_4_per_image_score.csv",
        [("ref_4.png", f"distort_4_{k}.png", None) for k in range(3)],
        header="reference image, distorted image, score for distorted image",
    ),
    "pieapp-2afc": Spec(
        L.make_pieapp,
        "PieAPP_dataset_CVPR_2018/labels/train/ref_1_pairwise_labels.csv",
        [("ref_1.png", f"distort_1_{a}.png", f"distort_1_{b}.png", None, None) for a in range(3) for b in range(3)],
        header="ref. image, distorted image A, distorted image B, "
        "raw probability of preference for A, processed probability of preference for A",
    ),
}


@st.composite
def label_text(draw, spec: Spec) -> bytes:
    kind = draw(st.sampled_from(["rows"] * 6 + ["text", "bytes", "empty"]))
    if kind == "text":
        return draw(st.text(max_size=200)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "empty":
        return b""
    lines = []
    if spec.header:
        cols = spec.header.split(",")
        how = draw(st.sampled_from(["ok"] * 4 + ["drop", "dup", "junk", "none"]))
        i = draw(st.integers(0, len(cols) - 1))
        if how == "drop":
            del cols[i]
        elif how == "dup":  # equal to another column once stripped and lower-cased
            cols.append(" " + cols[i].strip().upper())
        elif how == "junk":
            cols = [draw(st.text(max_size=5)) for _ in cols]
        if how != "none":
            lines.append(",".join(cols))
    for _ in range(draw(st.integers(0, 6))):
        fields = [draw(LABEL) if f is None else f for f in draw(st.sampled_from(spec.valid))]
        how = draw(st.sampled_from(["ok"] * 4 + ["name", "drop", "extra", "junk"]))
        i = draw(st.integers(0, len(fields) - 1))
        if how == "name":
            fields[i] = draw(st.text(max_size=12))
        elif how == "drop":
            del fields[i]
        elif how == "extra":  # extra commas / fields
            fields += draw(st.lists(st.text(max_size=4), min_size=1, max_size=3))
        elif how == "junk":
            fields = [draw(st.text(max_size=30))]
        lines.append(spec.sep.join(fields))
    return "\n".join(lines).encode()


def _load_or_error(name, root, label_names, split="all", **kw):
    """The dataset, or None after checking the error is a RobenchError naming a label file."""
    try:
        return robench.load_dataset(name, split=split, root=root, **kw)
    except RobenchError as exc:
        msg = str(exc)
        assert any(n in msg for n in label_names) or "no items found" in msg, msg
        return None


def _labels_finite(ds) -> None:
    t = ds.full_table
    if ds.kind == "2afc":
        j = t["judge"].to_numpy(dtype=float)
        assert np.isfinite(j).all() and ((0 <= j) & (j <= 1)).all(), j
    else:
        assert (
            np.isfinite(t["mos"].to_numpy(dtype=float)).all() and np.isfinite(t["mos_raw"].to_numpy(dtype=float)).all()
        )
    for i in (0, len(ds) - 1):
        ds[i]  # items decode with the parsed labels


@pytest.mark.parametrize("name", sorted(TEXT_SPECS))
def test_fuzz_text_label_files(tmp_path, name):
    spec = TEXT_SPECS[name]
    spec.maker(tmp_path)
    label_file = tmp_path / spec.label_file
    assert label_file.is_file()

    @FUZZ
    @given(content=label_text(spec))
    def check(content):
        label_file.write_bytes(content)
        ds = _load_or_error(name, tmp_path, [label_file.name])
        if ds is not None:
            _labels_finite(ds)

    check()


CELL = st.one_of(
    st.none(),
    st.floats(),
    st.integers(-5, 5),
    LABEL.filter(str.isprintable),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=8),
)
CSIQ_ROWS = [
    (name, dtype, lv)
    for name in ("1600", "aerial_city", "boston", "bridge", "butter_flower")
    for dtype in ("noise", "jpeg 2000", "blur")
    for lv in (1, 2)
]


@st.composite
def csiq_sheet(draw) -> pd.DataFrame | bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        image, dtype, lv = draw(st.sampled_from(CSIQ_ROWS))
        row = {
            "image": int(image) if image.isdigit() else image,
            "dst_type": dtype,
            "dst_lev": lv,
            "dmos": draw(st.one_of(st.floats(), st.floats(0, 1), CELL)),
        }
        col = draw(st.sampled_from(["none"] * 4 + ["image", "dst_type", "dst_lev"]))
        if col != "none":
            row[col] = draw(CELL)
        rows.append(row)
    df = pd.DataFrame(rows, columns=["image", "dst_type", "dst_lev", "dmos"])
    how = draw(st.sampled_from(["ok"] * 3 + ["drop", "dup"]))
    if how == "drop":
        df = df.drop(columns=draw(st.sampled_from(list(df.columns))))
    elif how == "dup":
        df["DMOS "] = df["dmos"]
    return df


def test_fuzz_csiq_label_sheet(tmp_path):
    L.make_csiq(tmp_path)
    sheet = tmp_path / "CSIQ" / "csiq.DMOS.xlsx"

    @settings(FUZZ, max_examples=30)
    @given(content=csiq_sheet())
    def check(content):
        if isinstance(content, bytes):
            sheet.write_bytes(content)
        else:
            content.to_excel(sheet, sheet_name="all_by_image", index=False)
        ds = _load_or_error("csiq", tmp_path, [sheet.name])
        if ds is not None:
            _labels_finite(ds)

    check()


LIVE_N = 12  # images written by layouts.make_live
LIVE_REFS = [f"ref{i}.bmp" for i in range(1, 6)]


@st.composite
def live_mats(draw) -> tuple:
    from scipy.io import savemat

    def mat(d):
        bio = io.BytesIO()
        savemat(bio, d)
        return bio.getvalue()

    n = draw(st.sampled_from([LIVE_N] * 4 + [0, 1, LIVE_N + 1]))
    val = draw(st.sampled_from([st.floats(0, 100), st.floats(-1e300, 1e300), st.floats()]))  # finite, or not
    dmos = np.array([draw(val) for _ in range(n)])
    orgs = np.array([draw(st.sampled_from([0.0, 1.0]) if i % 5 else st.just(0.0)) for i in range(n)])
    if n and draw(st.integers(0, 3)) == 0:
        orgs[draw(st.integers(0, n - 1))] = draw(st.sampled_from([2.0, -1.0, 0.5, np.nan, np.inf]))
    kinds = draw(st.sampled_from(["ok"] * 4 + ["str", "missing", "bytes", "shape"]))
    if kinds == "str":
        dmos = np.array([draw(st.text(min_size=1, max_size=3, alphabet="ab1.")) for _ in range(n)])
    if kinds == "shape":
        dmos = dmos.reshape(-1, 1) if n else np.zeros((2, 3))
    d = {"dmos": dmos, "orgs": orgs}
    if kinds == "missing":
        del d[draw(st.sampled_from(["dmos", "orgs"]))]
    dmos_bytes = draw(st.binary(max_size=100)) if kinds == "bytes" else mat(d)
    names = [draw(st.sampled_from(LIVE_REFS)) for _ in range(n)]
    if n and draw(st.integers(0, 3)) == 0:
        names[draw(st.integers(0, n - 1))] = draw(st.one_of(st.text(max_size=6), st.just("")))
    cell = np.empty((1, n), dtype=object)
    for i, nm in enumerate(names):
        cell[0, i] = nm
    names_bytes = mat({"refnames_all": cell if draw(st.booleans()) else np.array(names or [""])})
    return dmos_bytes, names_bytes


def test_fuzz_live_mat_files(tmp_path):
    e = L.make_live(tmp_path)

    @settings(FUZZ, max_examples=30)
    @given(files=live_mats())
    def check(files):
        (e["base"] / "dmos.mat").write_bytes(files[0])
        (e["base"] / "refnames_all.mat").write_bytes(files[1])
        ds = _load_or_error("live", tmp_path, ["dmos.mat", "refnames_all.mat"])
        if ds is not None:
            _labels_finite(ds)

    check()


@st.composite
def judge_files(draw) -> bytes:
    kind = draw(st.sampled_from(["float", "float", "int", "bool", "complex", "str", "datetime", "object", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=120))
    shape = draw(st.sampled_from([(), (1,), (1, 1), (2,), (0,)]))
    n = int(np.prod(shape))
    if kind == "float":
        arr = np.array([draw(st.one_of(st.floats(), st.floats(0, 1))) for _ in range(n)]).reshape(shape)
    elif kind == "int":
        arr = np.array([draw(st.integers(-2, 2)) for _ in range(n)], dtype=np.int64).reshape(shape)
    elif kind == "bool":
        arr = np.zeros(shape, dtype=bool)
    elif kind == "complex":
        arr = np.full(shape, 0.5 + 0.5j)
    elif kind == "str":
        arr = np.array([draw(st.sampled_from(["0.5", "x", ""])) for _ in range(n)]).reshape(shape)
    elif kind == "datetime":
        arr = np.zeros(shape, dtype="datetime64[s]")
    else:
        arr = np.array([0.5, "x"], dtype=object)
    bio = io.BytesIO()
    np.save(bio, arr, allow_pickle=True)
    return bio.getvalue()


def test_fuzz_bapps_judge_files(tmp_path):
    e = L.make_bapps(tmp_path)
    judge = e["base"] / "val" / "color" / "judge" / "000001.npy"
    ds = robench.load_dataset("bapps-2afc", split="val", root=tmp_path, categories=["color"])

    @settings(FUZZ, max_examples=30)
    @given(content=judge_files())
    def check(content):
        judge.write_bytes(content)
        try:
            j = ds[1]["judge"]
        except DataError as exc:
            assert judge.name in str(exc)
            return
        assert isinstance(j, float) and 0.0 <= j <= 1.0

    check()


# ---------------------------------------------------------------------------------------------
# distortions on degenerate sizes (test_distortions.py fuzzes 8–40 px; every type × level is
# checked there at one size only)


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (9, 1), (2, 3), (5, 7)])
def test_every_distortion_on_degenerate_sizes(size):
    from robench.data import distortions as D

    img = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    for tid in sorted(D.DISTORTIONS):  # color_shift used np.gradient, which needs 2 px per axis
        for level in range(1, 6):
            out = D.apply(img, tid, level, seed=level)
            assert out.shape == img.shape and out.dtype == np.uint8, (D.DISTORTIONS[tid].name, level)


@pytest.mark.parametrize("shape", [(0, 4, 3), (4, 0, 3)])
def test_distortion_of_empty_image_is_a_clear_valueerror(shape):
    from robench.data import distortions as D

    with pytest.raises(ValueError, match="non-empty H×W×3"):
        D.apply(np.zeros(shape, np.uint8), "jpeg", 1)


@settings(FUZZ, max_examples=40)
@given(
    h=st.integers(1, 16),
    w=st.integers(1, 16),
    tid=st.integers(1, 25),
    level=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_fuzz_distortions_tiny_sizes(h, w, tid, level, seed):
    from robench.data import distortions as D

    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = D.apply(img, tid, level, seed=seed)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
