#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a working pidiff-data:
#   system packages → dlib models and sample photos (cached, SHA-256 verified) → Python env for
#   the trainer → release build → the main job on the embedded sample.
# Re-running is cheap: every step skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then SUDO="sudo"; fi
APT_PACKAGES=(libopencv-dev libdlib-dev libdlib-data libsqlite3-dev libopenblas-dev libpng-dev python3-venv python3-pip ca-certificates chromium)
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
# One resolver pass picks a torch and a torchvision built for each other (lpips needs torchvision,
# and facenet-pytorch's MTCNN needs torchvision's compiled nms op, so the pair must match; a
# CPU-only torch with PyPI's torchvision does not load). scipy is for the e4e alignment oracle,
# onnx for the tiny face-parsing and classifier models the Swift tests build, open_clip_torch for
# the CLIP vocabulary of `pidiff random-model`, lpips, onnxruntime, dlib-bin (dlib's Python binding,
# prebuilt) and facenet-pytorch for `pidiff eval`; pyarrow reads Parquet ingest sources (Docs/sources.md).
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "Trainer[test]" scipy onnx onnxruntime open_clip_torch lpips dlib-bin pyarrow
# facenet-pytorch pins torch<2.3 in its metadata but runs on current torch: no deps.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps facenet-pytorch

echo "== release build"
swift build -c release --product pidiff-data 2>&1 | tail -n 3

echo "== main job: the whole flow on the embedded sample with tiny random models (Pipelines/demo.yaml)"
export PIDIFF_OUT="$(mkdir -p "${PIDIFF_OUT:-out}" && cd "${PIDIFF_OUT:-out}" && pwd)"
export PIDIFF_PYTHON="$PWD/.venv/bin/python"
BIN=.build/release/pidiff-data
"$BIN" run --pipeline Pipelines/demo.yaml
"$BIN" balance report --catalog "$PIDIFF_OUT/sample.sqlite" --target 9 --min-images 3 --heatmap "$PIDIFF_OUT/balance.png"
"$BIN" masks report --catalog "$PIDIFF_OUT/sample.sqlite" --sheet "$PIDIFF_OUT/sample-masks.png"
echo "report: $PIDIFF_OUT/balance.png, shards: $PIDIFF_OUT/sample-work/shards, samples: $PIDIFF_OUT/sample-work/samples"
