#!/usr/bin/env bash
# Ingest throughput, ours vs a straightforward single-process Python implementation of the same
# steps (dlib's Python bindings + PIL alignment), on the same generated corpus, same machine.
# usage: scripts/bench/ingest-compare.sh [N] [OLD_PIDIFF_DATA]   (needs scripts/setup.sh; builds the
# dlib Python bindings into $PIDIFF_CACHE/bench-venv on first use, which takes a while on 2 cores)
# With OLD_PIDIFF_DATA (a release binary of an earlier commit) the same corpus is also ingested by
# it, in the same run, and the two catalogs' faces are compared (compare-ingest-outputs.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${1:-200}"
OLD="${2:-}"
CACHE="${PIDIFF_CACHE:-$HOME/.cache/pidiff-data}"
WORK="${TMPDIR:-/tmp}/pidiff-ingest-compare"
VENV="$CACHE/bench-venv"
if ! "$VENV/bin/python" -c "import dlib" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q numpy pillow scipy
  command -v cmake >/dev/null || { echo "dlib's Python build needs cmake: apt-get install cmake" >&2; exit 1; }
  "$VENV/bin/pip" install -q dlib==19.24.6
fi
rm -rf "$WORK" && mkdir -p "$WORK"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
echo "== pidiff-data bench ingest --n $N (release build, workers = cores)"
.build/release/pidiff-data bench ingest --n "$N" --work "$WORK" --json | tee "$WORK/ours.json"
echo "== python baseline (single process) on the same corpus"
"$VENV/bin/python" scripts/bench/ingest_baseline.py "$WORK/corpus" "$CACHE/models/shape_predictor_68_face_landmarks.dat" "$WORK/baseline" | tee "$WORK/baseline.json"
if [[ -n "$OLD" ]]; then
  echo "== $OLD bench ingest --n $N (before) on the same corpus"
  "$OLD" bench ingest --n "$N" --work "$WORK/old" --json | tee "$WORK/old.json"
  echo "== faces of the two catalogs"
  "$VENV/bin/python" scripts/bench/compare-ingest-outputs.py "$WORK/old/bench.sqlite" "$WORK/bench.sqlite"
fi
"$VENV/bin/python" - "$WORK" <<'PY'
import json, os, sys
w = sys.argv[1]
ours, base = json.load(open(f"{w}/ours.json")), json.loads(open(f"{w}/baseline.json").read().strip().splitlines()[-1])
if os.path.exists(f"{w}/old.json"):
    old = json.load(open(f"{w}/old.json"))
    print(f"before {old['images_per_second']:.2f} img/s, speed-up {old['images_per_second'] / base['images_per_second']:.2f}x")
print(f"ours {ours['images_per_second']:.2f} img/s, baseline {base['images_per_second']:.2f} img/s, speed-up {ours['images_per_second'] / base['images_per_second']:.2f}x")
PY
