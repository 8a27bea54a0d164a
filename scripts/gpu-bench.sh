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
timeout "${ENCODE_S:-150}" python3 Trainer/bench/bench_encode.py --device cuda --full ${ENCODE_ARGS:-} 2>&1 | tee "$OUT/encode.log"
timeout "${TRAIN_S:-240}" python3 Trainer/bench/bench_train.py --device cuda --full ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/train.log"
timeout "${SAMPLE_S:-150}" python3 Trainer/bench/bench_sample.py --device cuda --full ${SAMPLE_ARGS:-} 2>&1 | tee "$OUT/sample.log"
