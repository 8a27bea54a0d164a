#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a working pidiff-data:
#   system packages → dlib models and sample photos (cached, SHA-256 verified) → Python env for
#   the trainer → release build → the main job on the embedded sample.
# Re-running is cheap: every step skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then SUDO="sudo"; fi
APT_PACKAGES=(libopencv-dev libdlib-dev libdlib-data libsqlite3-dev libopenblas-dev python3-venv python3-pip ca-certificates chromium)
if ! dpkg -s "${APT_PACKAGES[@]}" >/dev/null 2>&1; then
  echo "== installing system packages: ${APT_PACKAGES[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}"
fi

PY="${PYTHON:-python3}"
export PIDIFF_CACHE="${PIDIFF_CACHE:-$HOME/.cache/pidiff-data}"
echo "== models and sample photos → $PIDIFF_CACHE"
PYTHON="$PY" ./scripts/fetch-assets.sh

echo "== Python environment (.venv) for the trainer"
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
# Prefer a local CPU-only torch wheel where the machine has one (pip's find-links): the default
# PyPI build bundles ~3 GB of CUDA libraries that CPU machines never use.
LOCAL_TORCH="$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | sort -V | tail -n 1 || true)"
if [[ -n "$LOCAL_TORCH" ]] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$LOCAL_TORCH"
fi
# The CLIP vocabulary only (see Trainer/pyproject.toml).
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps open_clip_torch
# scipy (e4e alignment oracle) and onnx (tiny face-parsing model) are for the Swift tests.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "Trainer[test]" scipy onnx

echo "== release build"
swift build -c release --product pidiff-data 2>&1 | tail -n 3

echo "== main job: ingest the embedded sample"
OUT="${PIDIFF_OUT:-out}"
mkdir -p "$OUT"
BIN=.build/release/pidiff-data
"$BIN" ingest "$PIDIFF_CACHE/sample/identities" --catalog "$OUT/sample.sqlite" --pipeline Pipelines/default.yaml
"$BIN" masks --catalog "$OUT/sample.sqlite" --pipeline Pipelines/default.yaml
"$BIN" masks report --catalog "$OUT/sample.sqlite" --sheet "$OUT/sample-masks.png"
"$BIN" status --catalog "$OUT/sample.sqlite"
echo "faces: $("$BIN" faces --catalog "$OUT/sample.sqlite" --json | wc -l) (pidiff-data faces --catalog $OUT/sample.sqlite --json)"
