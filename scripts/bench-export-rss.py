#!/usr/bin/env python3
"""Synthetic large split for measuring `pidiff-data export` (peak RSS, wall time).

Copies a small real catalog (one that has been through `ingest` and `masks`) and clones its
usable photos into PHOTOS synthetic photos over --identities identities, then stores a split
holding all of them (default name `big`). Nothing is decoded or written under the data root:

- every clone gets a distinct fake SHA-256 (sha256 of "pidiff-bench-synthetic:<n>") and its own
  rows in images, files, image_results, faces, image_hashes and masks, copied from a template
  photo (the real photos in turn); the crop512 / mask512 / e4e_input columns keep the template's
  content-addressed relative paths, so many rows point at the same artefact files under the base
  catalog's data root (meta.data_root is copied as is, an absolute path);
- files get manifest-style labels (race White/Black/Asian, age 15/35/60, gender male/female,
  cycling over identities) so every identity has known labels in the export's JSON and the balance
  grid; file paths are /nonexistent/pidiff-bench-synthetic/<identity>/<n>.jpg (never read);
- the split is written the way `storeSplit` (Sources/PIDiffCatalog/BalanceCatalog.swift) writes
  one: a completed `balance select` run, a `splits` row and one `split_items` row per photo (the
  first photo of each identity is the reference, the rest train).

Usage:
  scripts/bench-export-rss.py BASE.sqlite OUT.sqlite PHOTOS [--identities 800] [--split big]
  /usr/bin/time -v .build/release/pidiff-data export --catalog OUT.sqlite --split big --out DIR

Standard library only (sqlite3). OUT must not exist.
"""
import argparse
import datetime
import hashlib
import json
import os
import sqlite3
import sys

RACES = ["White", "Black", "Asian"]
AGES = [("15", "0-20"), ("35", "21-50"), ("60", "51+")]
GENDERS = ["male", "female"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="catalog that has been through ingest and masks")
    ap.add_argument("out", help="new catalog to create (must not exist)")
    ap.add_argument("photos", type=int, help="number of synthetic photos in the split")
    ap.add_argument("--identities", type=int, default=800)
    ap.add_argument("--split", default="big")
    a = ap.parse_args()
    if a.photos < 1 or a.identities < 1 or a.identities > a.photos:
        sys.exit("need 1 <= identities <= photos")
    if os.path.exists(a.out):
        sys.exit(f"{a.out} exists; remove it first")

    src = sqlite3.connect(f"file:{a.base}?mode=ro", uri=True)
    db = sqlite3.connect(a.out)
    src.backup(db)  # consistent copy, WAL included
    src.close()
    db.row_factory = sqlite3.Row

    fp = db.execute("""
        SELECT params_fingerprint FROM runs r WHERE command = 'ingest' AND status = 'completed'
          AND EXISTS (SELECT 1 FROM image_results x WHERE x.params_fingerprint = r.params_fingerprint)
        ORDER BY id DESC LIMIT 1""").fetchone()
    mfp = db.execute("SELECT params_fingerprint FROM runs WHERE command = 'masks' ORDER BY id DESC LIMIT 1").fetchone()
    if fp is None or mfp is None:
        sys.exit("base catalog needs a completed ingest and a masks run")
    fp, mfp = fp[0], mfp[0]

    # Templates: readable photos whose selected face passes quality and has a passing mask.
    templates = db.execute("""
        SELECT DISTINCT f.id AS file_id, f.sha256 FROM files f
        JOIN image_results r ON r.sha256 = f.sha256 AND r.params_fingerprint = ? AND r.outcome = 'ok'
        JOIN faces fa ON fa.sha256 = f.sha256 AND fa.params_fingerprint = ? AND fa.selected AND fa.quality_ok
        JOIN masks m ON m.sha256 = fa.sha256 AND m.face_fingerprint = fa.params_fingerprint AND m.face_index = fa.face_index
                    AND m.mask_fingerprint = ? AND m.ok
        WHERE f.read_error IS NULL GROUP BY f.sha256 ORDER BY f.path""", (fp, fp, mfp)).fetchall()
    if not templates:
        sys.exit("base catalog has no photo with a selected face and a passing mask")

    def cols(table):
        return [r[1] for r in db.execute(f"PRAGMA table_info({table})")]

    def clone(table, where, args, new_sha, drop=("id",)):
        c = [x for x in cols(table) if x not in drop]
        rows = db.execute(f"SELECT {', '.join(c)} FROM {table} WHERE {where}", args).fetchall()
        for row in rows:
            values = [new_sha if name == "sha256" else row[name] for name in c]
            db.execute(f"INSERT INTO {table} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})", values)
        return len(rows)

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ingest_run = db.execute("SELECT id FROM runs WHERE command = 'ingest' AND params_fingerprint = ? ORDER BY id DESC LIMIT 1",
                            (fp,)).fetchone()[0]
    db.execute("BEGIN")
    cur = db.execute("INSERT INTO sources (kind, location, first_run_id) VALUES ('manifest', ?, ?)",
                     (f"synthetic:bench-export-rss:{a.photos}x{a.identities}", ingest_run))
    source_id = cur.lastrowid

    per, extra = divmod(a.photos, a.identities)
    items = []  # (file_id, identity, role, path, sha)
    n = 0
    for k in range(a.identities):
        name = f"synth_{k:04d}"
        race = RACES[k % len(RACES)]
        age, _ = AGES[(k // len(RACES)) % len(AGES)]
        gender = GENDERS[(k // (len(RACES) * len(AGES))) % len(GENDERS)]
        identity_id = db.execute("INSERT INTO identities (name) VALUES (?)", (name,)).lastrowid
        for j in range(per + (1 if k < extra else 0)):
            t = templates[n % len(templates)]
            sha = hashlib.sha256(f"pidiff-bench-synthetic:{n}".encode()).hexdigest()
            tf = db.execute("SELECT * FROM files WHERE id = ?", (t["file_id"],)).fetchone()
            clone("images", "sha256 = ?", (t["sha256"],), sha, drop=())
            path = f"/nonexistent/pidiff-bench-synthetic/{name}/{n:06d}.jpg"
            file_id = db.execute("""
                INSERT INTO files (path, source_id, identity_id, byte_size, mtime_ns, sha256, read_error, caption,
                                   race, age, gender, origin, hint, run_id)
                VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, 'synthetic (bench-export-rss.py)', NULL, ?)""",
                (path, source_id, identity_id, tf["byte_size"], tf["mtime_ns"], sha, tf["caption"], race, age, gender,
                 ingest_run)).lastrowid
            clone("image_results", "sha256 = ?", (t["sha256"],), sha, drop=())
            clone("faces", "sha256 = ?", (t["sha256"],), sha)
            clone("image_hashes", "sha256 = ?", (t["sha256"],), sha, drop=())
            clone("masks", "sha256 = ?", (t["sha256"],), sha, drop=())
            items.append((file_id, name, "reference" if j == 0 else "train", path, sha))
            n += 1

    # The split, as storeSplit writes it.
    if db.execute("SELECT 1 FROM splits WHERE name = ?", (a.split,)).fetchone():
        sys.exit(f"split {a.split} exists in the base catalog")
    params = {"identities": a.identities, "images_per_identity": per, "name": a.split, "reference_images": 1, "seed": 0,
              "synthetic": "scripts/bench-export-rss.py"}
    cells = {}
    for k in range(a.identities):
        key = (RACES[k % len(RACES)], AGES[(k // len(RACES)) % len(AGES)][1])
        cells[key] = cells.get(key, 0) + 1
    quotas = [{"age": age, "available": c, "quota": c, "race": race, "selected": c} for (race, age), c in sorted(cells.items())]
    run_id = db.execute("""
        INSERT INTO runs (command, status, started_at, ended_at, params_fingerprint, parameters, counts)
        VALUES ('balance select', 'completed', ?, ?, '', ?, ?)""",
        (now, now, json.dumps(params, sort_keys=True, separators=(",", ":")), json.dumps({"items": len(items)}))).lastrowid
    db.execute("INSERT INTO splits (name, run_id, created_at, seed, parameters, quotas) VALUES (?, ?, ?, 0, ?, ?)",
               (a.split, run_id, now, json.dumps(params, sort_keys=True, separators=(",", ":")),
                json.dumps(quotas, sort_keys=True, separators=(",", ":"))))
    db.executemany("INSERT INTO split_items (split_name, file_id, identity, role, path, sha256) VALUES (?, ?, ?, ?, ?, ?)",
                   [(a.split, fid, ident, role, path, sha) for fid, ident, role, path, sha in items])
    db.execute("COMMIT")
    db.execute("PRAGMA journal_mode = WAL")
    db.close()

    root = sqlite3.connect(a.out).execute("SELECT value FROM meta WHERE key = 'data_root'").fetchone()
    print(f"{a.out}: split {a.split} = {len(items)} photos over {a.identities} identities, "
          f"cloned from {len(templates)} template photos; artefacts under {root[0] if root else '(no data_root)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
