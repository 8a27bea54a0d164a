"""Do two ingest catalogs of the same photos give the same faces? For every photo with a selected
face in both: same box, same 68 landmarks, same quality figures, and crops with the same pixels
(and the same bytes); and of every face the old one recorded, whether the new one recorded it with
the same box and landmarks. Used to check that a faster ingest changed nothing it should not.

usage: compare-ingest-outputs.py OLD.sqlite NEW.sqlite
Needs numpy and pillow (the bench venv of ingest-compare.sh has them). Prints one JSON line.
"""
import json
import os
import sqlite3
import sys

import numpy as np
import PIL.Image

FIELDS = "box_left, box_top, box_right, box_bottom, landmarks68, quad, face_size, sharpness, roll_degrees, yaw, outside_fraction"


def selected(path):
    db = sqlite3.connect(path)
    root = path + ".data"
    rows = db.execute(f"SELECT sha256, {FIELDS}, crop512, crop256 FROM faces WHERE selected = 1").fetchall()
    faces_per_photo = dict(db.execute("SELECT sha256, COUNT(*) FROM faces GROUP BY sha256").fetchall())
    return {r[0]: (r[1:-2], [os.path.join(root, c) for c in r[-2:]]) for r in rows}, faces_per_photo


def all_faces(path):
    db = sqlite3.connect(path)
    return {(r[0], r[1:5]): r[5] for r in db.execute("SELECT sha256, box_left, box_top, box_right, box_bottom, landmarks68 FROM faces")}


def pixels(path):
    return np.asarray(PIL.Image.open(path).convert("RGB"))


def main():
    (old, old_counts), (new, new_counts) = selected(sys.argv[1]), selected(sys.argv[2])
    both = sorted(set(old) & set(new))
    same_box = same_fields = same_pixels = same_bytes = 0
    differing = []
    for sha in both:
        (a, a_crops), (b, b_crops) = old[sha], new[sha]
        box = a[:4] == b[:4]
        same_box += box
        same_fields += a == b
        px = all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a_crops, b_crops))
        same_pixels += px
        same_bytes += all(open(x, "rb").read() == open(y, "rb").read() for x, y in zip(a_crops, b_crops))
        if not (box and a == b and px):
            differing.append(sha[:12])
    # Every face the old catalog recorded (not only the selected ones): in the new one with the
    # same box and landmarks?
    old_all, new_all = all_faces(sys.argv[1]), all_faces(sys.argv[2])
    kept = sum(1 for key, landmarks in old_all.items() if new_all.get(key) == landmarks)
    print(json.dumps({
        "photos_old": len(old_counts), "photos_new": len(new_counts),
        "selected_in_both": len(both), "only_old": len(set(old) - set(new)), "only_new": len(set(new) - set(old)),
        "same_box": same_box, "same_landmarks_and_quality": same_fields, "same_crop_pixels": same_pixels,
        "same_crop_bytes": same_bytes,
        "faces_old": sum(old_counts.values()), "faces_new": sum(new_counts.values()),
        "old_faces_in_new_with_same_box_and_landmarks": kept,
        "differing": differing[:20],
    }))


if __name__ == "__main__":
    main()
