import Foundation
import PIDiffModel

/// Reads a Hugging Face Parquet file for the scanner through pyarrow, in a Python subprocess
/// (Docs/sources.md says why): the child reads one row group at a time, `parquet_batch_rows` rows
/// per batch, writes each row's image bytes to a content-addressed file under the cache folder
/// (`<data root>/sources/<sha256 prefix>/<sha256>.<ext>`, written to a temporary name and renamed;
/// an existing file is left as it is) and prints one JSON line per row. Its stdout is a pipe the
/// scanner reads a line at a time, so a slow catalog writer stops the child at the pipe: memory
/// holds one batch whatever the file's size.
///
/// The program is kept here, next to the Swift side of its line protocol, so the two cannot drift
/// apart across installs; it needs only `pyarrow` in the Python it runs with.
///
/// Lines (JSON objects, `type` first):
/// - `schema`: `columns`, `rows`, `row_groups`, `labels` (label → column found), `missing_labels`
/// - `row`: `row` (0-based index in the file), `identity`, `path` (the stored image; for another
///   partition's row, the name it would have, not written), `labels`
///   (`caption`/`race`/`age`/`gender` → text), `image_path` (the Image feature's own `path`, if any)
/// - `problem`: `rows` (`"17"` or `"64-127"`), `reason`: a row (or a row group) that gives no photo;
///   under a partition only for its own rows (a row group's, by its first unread row)
/// - `refused`: `reason`: the file as a whole is not a usable source (missing column, not Parquet)
/// - `fatal`: `reason`: the cache cannot be written (stops the run, as any data-root failure)
/// - `end`: `rows`: the file was read to its end
enum ParquetRows {
    struct Request: Encodable {
        var parquet: String
        var cache: String
        var identity: String
        var image: String
        var labels: [String: String]
        var batchRows: Int
        var countOnly: Bool
        /// Under `ingest --partition K/N`: `[K, N]`, and the row key before its index
        /// (`file.parquet#row=`). The child stores images and reports problems only for this
        /// partition's rows (`Partition.contains`'s rule: SHA-256 of the key, first 8 bytes, mod N);
        /// other rows still come as `row` lines, with the path their image would have, so which
        /// row of a repeated image comes first is the same on every machine.
        var partition: [Int]?
        var rowKey: String
        enum CodingKeys: String, CodingKey {
            case parquet, cache, identity, image, labels, partition, batchRows = "batch_rows", countOnly = "count_only", rowKey = "row_key"
        }
    }

    static let script = #"""
import hashlib, json, os, sys

def out(obj):
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")

def why(e):
    return " ".join(str(e).split()) or type(e).__name__

def sniff(data):
    if data[:3] == b"\xff\xd8\xff": return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n": return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP": return "webp"
    if data[:2] == b"BM": return "bmp"
    return None

def text(value, names):
    if value is None: return None
    if isinstance(value, bool): return "true" if value else "false"
    if isinstance(value, int) and names is not None:
        return names[value] if 0 <= value < len(names) else None
    if isinstance(value, float) and value.is_integer(): return str(int(value))
    if isinstance(value, (bytes, bytearray)): return None
    if isinstance(value, (list, dict)): return json.dumps(value, ensure_ascii=False, sort_keys=True)
    s = str(value)
    return s if s.strip() else None

def class_names(schema):
    # Hugging Face writes its features into the Arrow schema metadata; ClassLabel columns are
    # stored as integers whose names are listed there.
    try:
        info = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        features = info.get("info", {}).get("features", {})
        return {k: v["names"] for k, v in features.items() if isinstance(v, dict) and v.get("_type") == "ClassLabel" and "names" in v}
    except Exception:
        return {}

def store(cache, data, ext, write, seen):
    # Only the first row of an image in the file may store it (on one machine the later rows are
    # repeats of its path): under a partition, a repeat in this partition of another partition's
    # row would otherwise leave a file no row names.
    raw = hashlib.sha256(data).digest()
    digest = raw.hex()
    folder = os.path.join(cache, digest[:2])
    final = os.path.join(folder, digest + "." + ext)
    first = raw not in seen
    seen.add(raw)
    if not (write and first) or os.path.exists(final): return final
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, ".tmp-%d-%s" % (os.getpid(), digest))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        try: os.unlink(tmp)
        except OSError: pass
        raise
    return final

def main():
    req = json.loads(sys.argv[1])
    path = req["parquet"]
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        out({"type": "refused", "reason": "pyarrow is not installed in %s (%s); scripts/setup.sh installs it" % (sys.executable, e)})
        return
    try:
        # No pre-buffering and a 1 MiB buffered stream: pages are read as they are decoded
        # rather than a row group's column chunks all at once.
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        schema = pf.schema_arrow
    except Exception as e:
        out({"type": "refused", "reason": "not a readable Parquet file (%s)" % why(e)})
        return
    names = schema.names
    present = ", ".join(names) or "none"
    for key, column, setting in [("identity", req["identity"], "identity_column"), ("image", req["image"], "image_column")]:
        if column not in names:
            out({"type": "refused", "reason": "no %s column `%s` (columns present: %s); set huggingface.%s" % (key, column, present, setting)})
            return
    labels = {k: c for k, c in req["labels"].items() if c in names}
    classes = class_names(schema)
    meta = pf.metadata
    out({"type": "schema", "columns": names, "rows": meta.num_rows, "row_groups": meta.num_row_groups,
         "labels": labels, "missing_labels": sorted(k for k, c in req["labels"].items() if c not in names)})
    if req["count_only"]:
        return
    ident, image = req["identity"], req["image"]
    columns = [ident, image] + sorted(set(labels.values()) - {ident, image})
    cache = req["cache"]
    here = os.path.dirname(os.path.abspath(path))
    part = req.get("partition")
    def ours(row):
        if not part: return True
        digest = hashlib.sha256((req["row_key"] + str(row)).encode()).hexdigest()
        return int(digest[:16], 16) % part[1] == part[0] - 1
    def problem(row, reason, rows=None):
        if ours(row): out({"type": "problem", "rows": rows or str(row), "reason": reason})
    start, seen = 0, set()
    for group in range(meta.num_row_groups):
        count = meta.row_group(group).num_rows
        done = 0
        try:
            for batch in pf.iter_batches(batch_size=req["batch_rows"], row_groups=[group], columns=columns, use_threads=False):
                # Values are turned into Python objects one row at a time: a whole batch as
                # Python objects would be a second copy of its images.
                data = {name: batch.column(k) for k, name in enumerate(batch.schema.names)}
                for i in range(batch.num_rows):
                    row = start + done + i
                    own = ours(row)
                    identity = text(data[ident][i].as_py(), classes.get(ident))
                    if identity is None:
                        problem(row, "identity column `%s` is empty or not a known class" % ident)
                        continue
                    value = data[image][i].as_py()
                    original = None
                    if isinstance(value, dict):
                        blob, original = value.get("bytes"), value.get("path")
                    elif isinstance(value, (bytes, bytearray)):
                        blob = bytes(value)
                    elif value is None:
                        blob = None
                    else:
                        problem(row, "image column `%s` holds %s, not an Image {bytes, path} or binary" % (image, type(value).__name__))
                        continue
                    stored = None
                    if blob is None:
                        if original:
                            candidate = original if os.path.isabs(original) else os.path.join(here, original)
                            if os.path.isfile(candidate):
                                stored = os.path.abspath(candidate)
                        if stored is None:
                            reason = "image is null" if value is None else ("image has no bytes and its path %r is not a file" % original if original else "image has neither bytes nor a path")
                            problem(row, reason)
                            continue
                    else:
                        blob = bytes(blob)
                        if not blob:
                            problem(row, "image bytes are empty")
                            continue
                        ext = sniff(blob)
                        if ext is None:
                            problem(row, "image bytes are not JPEG, PNG, WebP or BMP (%d bytes starting %s)" % (len(blob), blob[:8].hex()))
                            continue
                        try:
                            stored = store(cache, blob, ext, own, seen)
                        except OSError as e:
                            out({"type": "fatal", "reason": "cannot write %s under %s: %s" % ("the image of row %d" % row, cache, why(e))})
                            sys.stdout.flush()
                            sys.exit(3)
                    row_labels = {}
                    for label, column in labels.items():
                        t = text(data[column][i].as_py(), classes.get(column))
                        if t is not None: row_labels[label] = t
                    out({"type": "row", "row": row, "identity": identity, "path": stored, "labels": row_labels, "image_path": original})
                done += batch.num_rows
        except Exception as e:
            last = start + count - 1
            rows = str(start + done) if start + done == last else "%d-%d" % (start + done, last)
            problem(start + done, "row group %d cannot be read (%s)" % (group, why(e)), rows)
        start += count
    out({"type": "end", "rows": start})

try:
    main()
except BrokenPipeError:
    sys.exit(0)
sys.stdout.flush()
"""#
}
