#!/usr/bin/env bash
# Partitioned ingest + masks as a Slurm array job: task K of N ingests partition K/N of the
# photos into its own catalog (and data root) on shared storage. Submit, then the merge:
#   jobid=$(sbatch --parsable --array=1-8 Pipelines/cluster/slurm-ingest.sh)
#   sbatch --dependency=afterok:$jobid Pipelines/cluster/slurm-merge.sh
# Settings (environment, or edit here): PIDIFF_PHOTOS (a folder of identity folders or a
# manifest), PIDIFF_PARTS (shared folder for the part catalogs), PIDIFF_PIPELINE (one pipeline
# file for every part: parts made with other parameters are refused at merge), PIDIFF_DATA
# (the pidiff-data executable, default: on PATH). Docs/cluster.md explains the flow.
#SBATCH --job-name=pidiff-ingest
#SBATCH --cpus-per-task=16
#SBATCH --mem=16G
#SBATCH --output=pidiff-ingest-%A_%a.log
set -euo pipefail
: "${PIDIFF_PHOTOS:?set PIDIFF_PHOTOS}" "${PIDIFF_PARTS:?set PIDIFF_PARTS}"
: "${SLURM_ARRAY_TASK_ID:?run as an array job (sbatch --array=1-N)}"
BIN="${PIDIFF_DATA:-pidiff-data}"
K="$SLURM_ARRAY_TASK_ID"
N="${SLURM_ARRAY_TASK_COUNT:-${PIDIFF_PARTITIONS:?set PIDIFF_PARTITIONS when the array size is unknown}}"
PART="$PIDIFF_PARTS/part-$K-of-$N.sqlite"
PIPELINE=()
[[ -n "${PIDIFF_PIPELINE:-}" ]] && PIPELINE=(--pipeline "$PIDIFF_PIPELINE")
mkdir -p "$PIDIFF_PARTS"
"$BIN" ingest "$PIDIFF_PHOTOS" --catalog "$PART" --partition "$K/$N" "${PIPELINE[@]}"
"$BIN" masks --catalog "$PART" "${PIPELINE[@]}"
