#!/usr/bin/env bash
# Merges the part catalogs of slurm-ingest.sh into one and curates it (run after the array job:
# sbatch --dependency=afterok:<array job id> Pipelines/cluster/slurm-merge.sh). PIDIFF_CATALOG is
# the merged catalog; the other settings are slurm-ingest.sh's.
#SBATCH --job-name=pidiff-merge
#SBATCH --cpus-per-task=16
#SBATCH --mem=16G
#SBATCH --output=pidiff-merge-%j.log
set -euo pipefail
: "${PIDIFF_PARTS:?set PIDIFF_PARTS}" "${PIDIFF_CATALOG:?set PIDIFF_CATALOG}"
BIN="${PIDIFF_DATA:-pidiff-data}"
PIPELINE=()
[[ -n "${PIDIFF_PIPELINE:-}" ]] && PIPELINE=(--pipeline "$PIDIFF_PIPELINE")
shopt -s nullglob
parts=("$PIDIFF_PARTS"/part-*.sqlite)
(( ${#parts[@]} > 0 )) || { echo "no part catalogs in $PIDIFF_PARTS" >&2; exit 1; }
"$BIN" catalog merge "${parts[@]}" --into "$PIDIFF_CATALOG"
"$BIN" verify --catalog "$PIDIFF_CATALOG"
"$BIN" curate --catalog "$PIDIFF_CATALOG" "${PIPELINE[@]}"
