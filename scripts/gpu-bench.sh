#!/usr/bin/env bash
# The GPU benchmarks of the trainer side, as one script for a lent GPU machine (see
# Docs/benchmarks.md). Needs diffusers (and its pure-Python deps) as wheels in .whl/ when the
# machine lacks them. Writes logs to $OUT (or ./gpu-out).
set -uo pipefail
OUT="${OUT:-gpu-out}"; mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/Trainer" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | tee -a "$OUT/gpu.txt"
# A stage whose limit is 0 is skipped.
stage() {  # stage NAME LIMIT_S SCRIPT ARGS
  local name="$1" limit="$2" script="$3"; shift 3
  [[ "$limit" == 0 ]] && { echo "== $name skipped" | tee "$OUT/$name.log"; return; }
  timeout "$limit" python3 "$script" --device cuda --full "$@" 2>&1 | tee "$OUT/$name.log"
}
stage encode "${ENCODE_S:-150}" Trainer/bench/bench_encode.py ${ENCODE_ARGS:-}
stage train "${TRAIN_S:-240}" Trainer/bench/bench_train.py ${TRAIN_ARGS:-}
stage sample "${SAMPLE_S:-150}" Trainer/bench/bench_sample.py ${SAMPLE_ARGS:-}
