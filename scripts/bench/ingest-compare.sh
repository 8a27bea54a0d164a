#!/usr/bin/env bash
# Ingest throughput, ours vs a straightforward single-process Python implementation of the same
# steps (dlib's Python bindings + PIL alignment), on the same generated corpus, same machine.
# usage: scripts/bench/ingest-compare.sh [N]   (needs scripts/setup.sh; builds the dlib Python
# bindings into $PIDIFF_CACHE/bench-venv on first use, which takes a while on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${1:-200}"
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
"$VENV/bin/python" - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
ours, base = json.load(open(f"{w}/ours.json")), json.loads(open(f"{w}/baseline.json").read().strip().splitlines()[-1])
print(f"ours {ours['images_per_second']:.2f} img/s, baseline {base['images_per_second']:.2f} img/s, speed-up {ours['images_per_second'] / base['images_per_second']:.2f}x")
PY
