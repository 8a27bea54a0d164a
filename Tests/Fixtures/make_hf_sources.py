"""Writes Hugging Face dataset layouts built from the sample photos, for the ingest tests of
imagefolder and Parquet sources (Docs/sources.md). Column names are deliberately not the
defaults, so the tests exercise the `huggingface:` column mapping:

  person (identity), ethnicity (race), age_years (age), sex (gender), text (caption)

OUT/imagefolder_csv/       metadata.csv + images/…: 4 good rows (one caption with a comma, a quote
                           and a newline), a row with an empty person, a row naming a missing file,
                           a row with too few fields, a row whose file_name leaves the folder
OUT/imagefolder_jsonl/     metadata.jsonl + photos in sub-folders: 3 good rows, a line that is not
                           JSON, a line without file_name
OUT/imagefolder_noid/      metadata.csv without the person column (the source is refused)
OUT/parquet/faces.parquet  HF Image feature {bytes, path}, person as a ClassLabel, row groups of 3:
                           rows 0-3 good (obama ×3, biden), 4 garbage bytes, 5 null image, 6 a
                           truncated JPEG, 7 no bytes and a path that does not exist, 8 an empty
                           person, 9 the bytes of row 0 again (stored once), 10 a path-only image
                           that exists next to the file
OUT/parquet/damaged.parquet  rows 0-3 of faces.parquet in row groups of 2, row group 1's page
                           header overwritten (rows 2-3 unreadable, rows 0-1 kept)
OUT/parquet/no_identity.parquet  image + name columns only (refused: no person column)
OUT/parquet/not_parquet.parquet  text bytes (refused: not Parquet)

usage: make_hf_sources.py SAMPLE_IDENTITIES_DIR OUT_DIR
       make_hf_sources.py --big SAMPLE_JPEG OUT.parquet GIGABYTES   (RSS measurement file)
"""
import csv
import json
import os
import shutil
import sys

import pyarrow as pa
import pyarrow.parquet as pq

PEOPLE = ["obama", "biden"]


def read(path):
    with open(path, "rb") as f:
        return f.read()


def image_type():
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def hf_metadata(features):
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def imagefolders(sample, out):
    photos = {
        "obama1": os.path.join(sample, "obama", "obama.jpg"),
        "obama2": os.path.join(sample, "obama", "obama2.jpg"),
        "obama3": os.path.join(sample, "obama", "obama3.jpg"),
        "biden": os.path.join(sample, "biden", "biden.jpg"),
    }
    # metadata.csv, written by the csv module (quoting as any CSV writer does).
    root = os.path.join(out, "imagefolder_csv")
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    for name, src in photos.items():
        shutil.copy(src, os.path.join(root, "images", name + ".jpg"))
    with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "person", "ethnicity", "age_years", "sex", "text"])
        w.writerow(["images/obama1.jpg", "obama", "african american", "47", "male", 'a man, smiling, says "hello"\non two lines'])
        w.writerow(["images/obama2.jpg", "obama", "african american", "48", "M", ""])
        w.writerow(["images/obama3.jpg", "obama", "", "", "", "third"])
        w.writerow(["images/biden.jpg", "biden", "white", "70", "male", "an older man"])
        w.writerow(["images/obama1.jpg", "", "white", "", "", "no person"])          # record 6: empty identity
        w.writerow(["images/missing.jpg", "obama", "", "", "", ""])                  # record 7: file missing
        w.writerow(["images/biden.jpg", "biden"])                                    # record 8: too few fields
        w.writerow(["../imagefolder_jsonl/a/obama.jpg", "obama", "", "", "", ""])    # record 9: outside the folder

    # metadata.jsonl, photos in sub-folders.
    root = os.path.join(out, "imagefolder_jsonl")
    for sub in ["a", "b"]:
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    shutil.copy(photos["obama1"], os.path.join(root, "a", "obama.jpg"))
    shutil.copy(photos["obama2"], os.path.join(root, "a", "obama2.jpg"))
    shutil.copy(photos["biden"], os.path.join(root, "b", "biden.jpg"))
    lines = [
        json.dumps({"file_name": "a/obama.jpg", "person": "obama", "ethnicity": "african american", "age_years": 47, "sex": "male", "text": "a portrait"}),
        json.dumps({"file_name": "a/obama2.jpg", "person": "obama", "age_years": 48}),
        "{not json",
        json.dumps({"person": "biden"}),
        json.dumps({"file_name": "b/biden.jpg", "person": "biden", "ethnicity": "white", "sex": "male"}),
    ]
    with open(os.path.join(root, "metadata.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")

    root = os.path.join(out, "imagefolder_noid")
    os.makedirs(root, exist_ok=True)
    shutil.copy(photos["biden"], os.path.join(root, "biden.jpg"))
    with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "name", "text"])
        w.writerow(["biden.jpg", "biden", "no person column"])
    return photos


def parquets(photos, out):
    root = os.path.join(out, "parquet")
    os.makedirs(root, exist_ok=True)
    good = read(photos["obama1"])
    shutil.copy(photos["obama3"], os.path.join(root, "beside.jpg"))
    rows = [
        ({"bytes": good, "path": "obama1.jpg"}, 0, "african american", 47, "male", "first"),
        ({"bytes": read(photos["obama2"]), "path": "obama2.jpg"}, 0, "african american", 48, "male", None),
        ({"bytes": read(photos["obama3"]), "path": None}, 0, None, None, None, "third"),
        ({"bytes": read(photos["biden"]), "path": "biden.jpg"}, 1, "white", 70, "male", "an older man"),
        ({"bytes": b"this is not an image at all", "path": "garbage.jpg"}, 0, None, None, None, None),   # 4
        (None, 1, None, None, None, None),                                                              # 5
        ({"bytes": good[: len(good) // 3], "path": "truncated.jpg"}, 0, None, None, None, None),        # 6
        ({"bytes": None, "path": "nowhere/lost.jpg"}, 1, None, None, None, None),                       # 7
        ({"bytes": read(photos["biden"]), "path": "x.jpg"}, None, None, None, None, None),              # 8
        ({"bytes": good, "path": "again.jpg"}, 0, None, None, None, None),                              # 9
        ({"bytes": None, "path": "beside.jpg"}, 0, None, None, None, None),                             # 10
    ]
    table = pa.table({
        "image": pa.array([r[0] for r in rows], type=image_type()),
        "person": pa.array([r[1] for r in rows], type=pa.int64()),
        "ethnicity": pa.array([r[2] for r in rows], type=pa.string()),
        "age_years": pa.array([r[3] for r in rows], type=pa.int64()),
        "sex": pa.array([r[4] for r in rows], type=pa.string()),
        "text": pa.array([r[5] for r in rows], type=pa.string()),
    })
    features = {"image": {"_type": "Image"}, "person": {"_type": "ClassLabel", "names": PEOPLE},
                "ethnicity": {"dtype": "string", "_type": "Value"}, "age_years": {"dtype": "int64", "_type": "Value"},
                "sex": {"dtype": "string", "_type": "Value"}, "text": {"dtype": "string", "_type": "Value"}}
    table = table.replace_schema_metadata(hf_metadata(features))
    pq.write_table(table, os.path.join(root, "faces.parquet"), row_group_size=3)

    # The same 4 good rows in row groups of 2, then the page header of row group 1's image column
    # overwritten: rows 0-1 read, rows 2-3 are one problem, and the reader carries on to the end.
    damaged = os.path.join(root, "damaged.parquet")
    pq.write_table(table.slice(0, 4), damaged, row_group_size=2, compression="none")
    offset = pq.ParquetFile(damaged).metadata.row_group(1).column(0).data_page_offset
    with open(damaged, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 24)

    other = pa.table({"image": pa.array([{"bytes": good, "path": "a.jpg"}], type=image_type()), "name": ["obama"]})
    pq.write_table(other, os.path.join(root, "no_identity.parquet"))
    with open(os.path.join(root, "not_parquet.parquet"), "w") as f:
        f.write("id,name\n1,obama\n")


def big(sample, path, gigabytes):
    """A Parquet file of about GIGABYTES GB: distinct 1 MB images (the sample JPEG's first 8 kB
    header-only part plus a unique tail, so each has its own SHA-256 and is refused as too small
    from its header without decoding) in row groups of 64 rows, for a peak-RSS measurement."""
    from PIL import Image
    import io
    tiny = io.BytesIO()
    Image.open(sample).convert("RGB").resize((32, 32)).save(tiny, "JPEG")
    head = tiny.getvalue()
    size = 1 << 20
    total = int(gigabytes * (1 << 30) / size)
    writer = None
    rows_per_group = 64
    for start in range(0, total, rows_per_group):
        n = min(rows_per_group, total - start)
        images = []
        for i in range(start, start + n):
            tail = os.urandom(size - len(head))
            images.append({"bytes": head + tail, "path": "img%07d.jpg" % i})
        table = pa.table({"image": pa.array(images, type=image_type()),
                          "person": pa.array(["person%03d" % (i % 500) for i in range(start, start + n)])})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="none")
        writer.write_table(table, row_group_size=rows_per_group)
    writer.close()
    print("%s: %d rows, %.2f GB" % (path, total, os.path.getsize(path) / 1e9))


def main():
    if sys.argv[1] == "--big":
        big(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return
    sample, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    photos = imagefolders(sample, out)
    parquets(photos, out)


if __name__ == "__main__":
    main()
