"""Baseline for `pidiff-data bench ingest`: the same ingest steps written the straightforward way
in one Python process — dlib's Python bindings for detection and landmarks, PIL for decoding and
e4e's alignment, numpy/scipy for the rest, sqlite3 for the catalog.

usage: ingest_baseline.py CORPUS_DIR SHAPE_PREDICTOR_68 OUT_DIR [--detect-max-side 1024]
Prints one JSON line: images, seconds, images_per_second, stage seconds.
"""
import argparse
import hashlib
import io
import json
import os
import sqlite3
import sys
import time

import dlib
import numpy as np
import PIL.Image
import PIL.ImageOps
import scipy.ndimage

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "Fixtures"))
from e4e_align_oracle import align  # noqa: E402  (the same align_face port the tests use)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("predictor")
    ap.add_argument("out")
    ap.add_argument("--detect-max-side", type=int, default=1024)
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    db = sqlite3.connect(os.path.join(args.out, "baseline.sqlite"))
    db.execute("CREATE TABLE IF NOT EXISTS faces (path TEXT, sha256 TEXT, landmarks TEXT, crop512 TEXT, crop256 TEXT, sharpness REAL)")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(args.predictor)
    stages = dict.fromkeys(["read+hash", "decode", "detect", "landmarks", "align", "quality", "store"], 0.0)
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(args.corpus) for f in fs if f.lower().endswith((".jpg", ".png")))

    start = time.perf_counter()
    for path in paths:
        t = time.perf_counter()
        data = open(path, "rb").read()
        sha = hashlib.sha256(data).hexdigest()
        t, stages["read+hash"] = time.perf_counter(), stages["read+hash"] + time.perf_counter() - t
        img = PIL.ImageOps.exif_transpose(PIL.Image.open(io.BytesIO(data))).convert("RGB")
        arr = np.asarray(img)
        t, stages["decode"] = time.perf_counter(), stages["decode"] + time.perf_counter() - t
        scale = min(1.0, args.detect_max_side / max(img.size))
        small = np.asarray(img.resize((round(img.width * scale), round(img.height * scale)), PIL.Image.BOX)) if scale < 1 else arr
        dets = detector(small, 0) or detector(small, 1)  # the same cascade as pidiff-data's default
        t, stages["detect"] = time.perf_counter(), stages["detect"] + time.perf_counter() - t
        if not dets:
            continue
        d = max(dets, key=lambda r: r.area())
        box = dlib.rectangle(int(d.left() / scale), int(d.top() / scale), int(d.right() / scale), int(d.bottom() / scale))
        shape = predictor(arr, box)
        lm = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        t, stages["landmarks"] = time.perf_counter(), stages["landmarks"] + time.perf_counter() - t
        crops = {size: align(img, lm.copy(), size) for size in (512, 256)}
        t, stages["align"] = time.perf_counter(), stages["align"] + time.perf_counter() - t
        gray = np.asarray(crops[256].convert("L"), dtype=np.float64)
        sharpness = float(scipy.ndimage.laplace(gray).var())
        t, stages["quality"] = time.perf_counter(), stages["quality"] + time.perf_counter() - t
        names = {}
        for size, crop in crops.items():
            buf = io.BytesIO()
            crop.save(buf, "PNG", compress_level=3)
            name = hashlib.sha256(buf.getvalue()).hexdigest() + ".png"
            with open(os.path.join(args.out, name), "wb") as f:
                f.write(buf.getvalue())
            names[size] = name
        db.execute("INSERT INTO faces VALUES (?, ?, ?, ?, ?, ?)", (path, sha, json.dumps(lm.tolist()), names[512], names[256], sharpness))
        db.commit()
        stages["store"] += time.perf_counter() - t
    seconds = time.perf_counter() - start
    print(json.dumps({"images": len(paths), "seconds": seconds, "images_per_second": len(paths) / seconds, "stage_seconds": stages}))


if __name__ == "__main__":
    main()
