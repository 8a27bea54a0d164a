#!/usr/bin/env bash
# Fault soak: SIGKILL `pidiff-data ingest` and `pidiff-data export` at random moments, N times
# each, checking after every kill that the catalog verifies; then finish both and compare with an
# uninterrupted run (faces and shard bytes must be identical).
# usage: scripts/soak-kill.sh [N=20]   (needs a release build and scripts/setup.sh's sample)
set -uo pipefail
cd "$(dirname "$0")/.."
N="${1:-20}"
BIN="$PWD/.build/release/pidiff-data"
CACHE="${PIDIFF_CACHE:-$HOME/.cache/pidiff-data}"
W="${TMPDIR:-/tmp}/pidiff-soak"
rm -rf "$W" && mkdir -p "$W"
"$BIN" bench ingest --n 60 --work "$W/gen" >/dev/null 2>&1   # builds $W/gen/corpus (60 distinct photos)
CORPUS="$W/gen/corpus"
split_setup() { # catalog: masks, labels for the generated identities, a split of 4 of them
  "$BIN" masks --catalog "$1" >/dev/null 2>&1 || return 1
  printf 'identity,race,age\n32bit,Asian,30\nbiden,White,66\nobama,Black,47\nobama2,Black,15\nobama3,White,30\n' > "$W/labels.csv"
  "$BIN" labels import "$W/labels.csv" --catalog "$1" >/dev/null 2>&1 || return 1
  "$BIN" balance select --catalog "$1" --name soak --identities 4 --images-per-identity 3 --reference-images 1 >/dev/null 2>&1
}
faces() { "$BIN" faces --catalog "$1" --json | sed -E "s#$2##g" | sort; }

"$BIN" ingest "$CORPUS" --catalog "$W/ref.sqlite" >/dev/null 2>&1 || { echo "reference ingest failed"; exit 1; }
fail=0
for i in $(seq 1 "$N"); do
  "$BIN" ingest "$CORPUS" --catalog "$W/soak.sqlite" >/dev/null 2>&1 &
  pid=$!
  sleep "$(awk -v s="$RANDOM" 'BEGIN { srand(s); printf "%.2f", 0.05 + rand() * 2.5 }')"
  kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  if ! "$BIN" verify --catalog "$W/soak.sqlite" >/dev/null 2>&1; then echo "ingest kill $i: verify failed"; fail=1; fi
done
"$BIN" ingest "$CORPUS" --catalog "$W/soak.sqlite" >/dev/null 2>&1
if diff <(faces "$W/ref.sqlite" "$W/ref.sqlite.data") <(faces "$W/soak.sqlite" "$W/soak.sqlite.data") >/dev/null; then
  echo "ingest: $N kills, resumed catalog equals the uninterrupted one"
else echo "ingest: resumed catalog differs"; fail=1; fi

split_setup "$W/ref.sqlite" || { echo "split setup failed"; exit 1; }
"$BIN" export --split soak --out "$W/ref-shards" --catalog "$W/ref.sqlite" --max-shard-bytes 2e6 || { echo "reference export failed"; exit 1; }
[ "$(ls "$W/ref-shards"/soak-*.tar | wc -l)" -ge 3 ] || { echo "expected several shards"; exit 1; }
for i in $(seq 1 "$N"); do
  "$BIN" export --split soak --out "$W/soak-shards" --catalog "$W/ref.sqlite" --max-shard-bytes 2e6 >/dev/null 2>&1 &
  pid=$!
  sleep "$(awk -v s="$RANDOM" 'BEGIN { srand(s); printf "%.3f", rand() * 0.6 }')"
  kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
done
"$BIN" export --split soak --out "$W/soak-shards" --catalog "$W/ref.sqlite" --max-shard-bytes 2e6 >/dev/null 2>&1
if diff <(cd "$W/ref-shards" && sha256sum soak-*.tar soak.index.json) <(cd "$W/soak-shards" && sha256sum soak-*.tar soak.index.json) >/dev/null; then
  echo "export: $N kills, resumed shards byte-identical to the uninterrupted export"
else echo "export: resumed shards differ"; fail=1; fi
exit "$fail"
