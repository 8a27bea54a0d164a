#!/usr/bin/env bash
# Fetch throughput, ours vs img2dataset, on the same URL list from the same loopback server in the
# same run; then our peak RSS at two list lengths (memory must be flat in the list length).
#
# usage: scripts/bench/fetch-compare.sh [N]        (N photos, default 5000)
# env:   MEM_N=100000   longest list of the memory run (0 skips it); the short one is MEM_N/10
#        REPS=3         runs of each throughput configuration (the median is reported)
#        HOSTS=8        loopback hosts the list is spread over (127.0.0.1..127.0.0.HOSTS), so the
#                       per-host limit of both tools acts as on a list of many web hosts
#        PY_SERVER=1    also run the best configurations against scripts/testing/loopback_http.py
#                       (to show which side is the bottleneck); 0 skips
#        I2D_MEM=0      1: img2dataset on the long memory list too
#        I2D=1          0: skip img2dataset (to compare two builds of ours)
#        PIDIFF_BIN     the pidiff-data binary (default: this checkout's release build)
#        ALT_BIN        a second pidiff-data binary (a candidate fix), run as "alt-*" beside ours
#
# Needs: the release build (swift build -c release --product pidiff-data), nginx (Debian:
# apt-get install -y nginx; started here by hand on loopback, never as a service), /usr/bin/time,
# and the sample photos ($PIDIFF_CACHE/sample/identities, scripts/fetch-assets.sh). img2dataset and
# Pillow are installed from PyPI into $PIDIFF_CACHE/img2dataset-venv on first use. Generated photos
# are cached in $PIDIFF_CACHE/fetch-bench; nothing here writes into the repository.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"
N="${1:-5000}"
MEM_N="${MEM_N:-100000}"
REPS="${REPS:-3}"
HOSTS="${HOSTS:-8}"
PY_SERVER="${PY_SERVER:-1}"
I2D_MEM="${I2D_MEM:-0}"
RUN_I2D="${I2D:-1}"
CACHE="${PIDIFF_CACHE:-$HOME/.cache/pidiff-data}"
VENV="$CACHE/img2dataset-venv"
CORPUS="$CACHE/fetch-bench"
WORK="${TMPDIR:-/tmp}/pidiff-fetch-compare"
BIN="${PIDIFF_BIN:-$REPO/.build/release/pidiff-data}"
ALT_BIN="${ALT_BIN:-}"
HELPER="$REPO/scripts/bench/fetch_corpus.py"
export NO_ALBUMENTATIONS_UPDATE=1   # img2dataset imports albumentations, which otherwise checks for updates online

[ -x "$BIN" ] || { echo "no release build: swift build -c release --product pidiff-data" >&2; exit 1; }
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "needs nginx: apt-get install -y nginx" >&2; exit 1; }
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time: apt-get install -y time" >&2; exit 1; }
if ! "$VENV/bin/python" -c "import img2dataset, PIL" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q img2dataset pillow
fi
PY="$VENV/bin/python"
I2D="$VENV/bin/img2dataset"

rm -rf "$WORK" && mkdir -p "$WORK/runs"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB, $(date -u +%F)"
echo "binary $BIN; img2dataset $("$VENV/bin/pip" show img2dataset 2>/dev/null | awk '/^Version/{print $2}'), $("$NGINX" -v 2>&1), pidiff-data $(git -C "$REPO" rev-parse --short HEAD)"

echo "== corpus: $N distinct photos (cached in $CORPUS)"
"$PY" "$HELPER" photos "$CORPUS/photos-$N" "$N"
"$PY" "$HELPER" stats "$CORPUS/photos-$N" | tee "$WORK/corpus.json"
if [ "$MEM_N" -gt 0 ]; then
  echo "== corpus: $MEM_N distinct tiny JPEGs for the memory run"
  "$PY" "$HELPER" tiny "$CORPUS/tiny-$MEM_N" "$MEM_N"
fi
cat "$CORPUS/photos-$N"/*.jpg > /dev/null   # into the page cache before the first timed run

# nginx on 127.0.0.1..HOSTS, one worker (it needs well under one core here; its CPU is measured).
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p "$WORK/nginx"
{
  echo "user root; worker_processes 1; daemon off; pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/error.log warn;"
  echo "events { worker_connections 4096; }"
  echo "http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000; keepalive_timeout 60s;"
  echo "  types { image/jpeg jpg; } default_type application/octet-stream;"
  echo "  client_body_temp_path $WORK/nginx/body; proxy_temp_path $WORK/nginx/proxy; fastcgi_temp_path $WORK/nginx/fcgi;"
  echo "  uwsgi_temp_path $WORK/nginx/uwsgi; scgi_temp_path $WORK/nginx/scgi;"
  echo "  server {"
  for h in $(seq 1 "$HOSTS"); do echo "    listen 127.0.0.$h:$PORT;"; done
  echo "    root $CORPUS; location / { try_files \$uri =404; } } }"
} > "$WORK/nginx/nginx.conf"
"$NGINX" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
PIDS+=($!)
for _ in $(seq 50); do [ -s "$WORK/nginx/nginx.pid" ] && break; sleep 0.1; done
NGINX_PIDS=("$(cat "$WORK/nginx/nginx.pid")" $(pgrep -P "$(cat "$WORK/nginx/nginx.pid")"))
curl -sf -o /dev/null "http://127.0.0.1:$PORT/photos-$N/p000000.jpg" || { echo "nginx does not serve" >&2; cat "$WORK/nginx/error.log" >&2; exit 1; }

"$PY" "$HELPER" list "$WORK/photos.csv" --kind photos --n "$N" --port "$PORT" --hosts "$HOSTS" --prefix "photos-$N/"

server_args() { local a=(); for p in "$@"; do a+=(--server-pid "$p"); done; echo "${a[@]}"; }

# ours NAME LIST CONCURRENCY PER_HOST SERVER_PIDS...   (the binary: $USE_BIN, default $BIN)
ours() {
  local name="$1" list="$2" c="$3" ph="$4"; shift 4
  local d="$WORK/runs/$name"; rm -rf "$d"; mkdir -p "$d"
  printf 'fetch:\n  concurrency: %s\n  per_host: %s\n' "$c" "$ph" > "$d/pipeline.yaml"
  sync; sleep 2
  "$PY" "$HELPER" measure "$d/measure.json" $(server_args "$@") -- \
    "${USE_BIN:-$BIN}" fetch "$list" --inbox "$d/inbox" --catalog "$d/catalog.sqlite" --pipeline "$d/pipeline.yaml" --allow-private --json > /dev/null \
    || { echo "$name failed:"; tail -5 "$d/measure.json.log"; }
  find "$d/inbox" -name '*.jpg' -not -path '*/.partial/*' | wc -l > "$d/images"
  echo "$name: $(cat "$d/images") images, $(cat "$d/measure.json")"
}

# i2d NAME LIST PROCESSES THREADS SHARD_SIZE EXTRA_ARGS SERVER_PIDS...
i2d() {
  local name="$1" list="$2" p="$3" t="$4" shard="$5" extra="$6"; shift 6
  local d="$WORK/runs/$name"; rm -rf "$d"; mkdir -p "$d"
  sync; sleep 2
  # shellcheck disable=SC2086
  "$PY" "$HELPER" measure "$d/measure.json" $(server_args "$@") -- \
    "$I2D" --url_list "$list" --input_format csv --url_col url --output_folder "$d/out" --output_format files \
      --resize_mode no --processes_count "$p" --thread_count "$t" --number_sample_per_shard "$shard" \
      --disallowed_header_directives '[]' --enable_wandb False $extra > /dev/null \
    || { echo "$name failed:"; tail -5 "$d/measure.json.log"; }
  find "$d/out" -name '*.jpg' | wc -l > "$d/images"
  echo "$name: $(cat "$d/images") images, $(cat "$d/measure.json")"
}

echo "== throughput: $N photos over $HOSTS loopback hosts (nginx), $REPS runs each"
for r in $(seq 1 "$REPS"); do
  ours "ours-default-r$r" "$WORK/photos.csv" 16 4 "${NGINX_PIDS[@]}"
  ours "ours-c32-ph8-r$r" "$WORK/photos.csv" 32 8 "${NGINX_PIDS[@]}"
  if [ -n "$ALT_BIN" ]; then
    USE_BIN="$ALT_BIN" ours "alt-default-r$r" "$WORK/photos.csv" 16 4 "${NGINX_PIDS[@]}"
    USE_BIN="$ALT_BIN" ours "alt-c32-ph8-r$r" "$WORK/photos.csv" 32 8 "${NGINX_PIDS[@]}"
  fi
  [ "$RUN_I2D" = 1 ] || continue
  i2d "i2d-defaults-r$r" "$WORK/photos.csv" 1 256 10000 "" "${NGINX_PIDS[@]}"
  i2d "i2d-p2-t32-r$r" "$WORK/photos.csv" 2 32 $(( (N + 7) / 8 )) "" "${NGINX_PIDS[@]}"
  i2d "i2d-p2-t32-noreencode-r$r" "$WORK/photos.csv" 2 32 $(( (N + 7) / 8 )) "--disable_all_reencoding True" "${NGINX_PIDS[@]}"
done

if [ "$PY_SERVER" = 1 ]; then
  echo "== the same against scripts/testing/loopback_http.py (one host, 127.0.0.1)"
  python3 scripts/testing/loopback_http.py --root "$CORPUS/photos-$N" > "$WORK/pyserver.out" &
  PYS=$!; PIDS+=($PYS)
  for _ in $(seq 50); do [ -s "$WORK/pyserver.out" ] && break; sleep 0.1; done
  PYPORT="$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["port"])' "$WORK/pyserver.out")"
  "$PY" "$HELPER" list "$WORK/photos-py.csv" --kind photos --n "$N" --port "$PYPORT" --hosts 1 --prefix "files/"
  curl -sf -o /dev/null "http://127.0.0.1:$PYPORT/files/p000000.jpg"   # its body cache
  ours "py-ours-c16-ph16" "$WORK/photos-py.csv" 16 16 "$PYS"
  [ "$RUN_I2D" = 1 ] && i2d "py-i2d-p2-t32-noreencode" "$WORK/photos-py.csv" 2 32 $(( (N + 7) / 8 )) "--disable_all_reencoding True" "$PYS"
  kill "$PYS" 2>/dev/null || true
fi

if [ "$MEM_N" -gt 0 ]; then
  echo "== memory: our peak RSS at $((MEM_N / 10)) and $MEM_N URLs (tiny distinct JPEGs, nginx)"
  "$PY" "$HELPER" list "$WORK/tiny-long.csv" --kind tiny --n "$MEM_N" --port "$PORT" --hosts "$HOSTS" --prefix "tiny-$MEM_N/"
  head -n $((MEM_N / 10 + 1)) "$WORK/tiny-long.csv" > "$WORK/tiny-short.csv"
  ours "mem-ours-short" "$WORK/tiny-short.csv" 16 4 "${NGINX_PIDS[@]}"
  ours "mem-ours-long" "$WORK/tiny-long.csv" 16 4 "${NGINX_PIDS[@]}"
  if [ -n "$ALT_BIN" ]; then
    USE_BIN="$ALT_BIN" ours "mem-alt-short" "$WORK/tiny-short.csv" 16 4 "${NGINX_PIDS[@]}"
    USE_BIN="$ALT_BIN" ours "mem-alt-long" "$WORK/tiny-long.csv" 16 4 "${NGINX_PIDS[@]}"
  fi
  if [ "$I2D_MEM" = 1 ] && [ "$RUN_I2D" = 1 ]; then
    i2d "mem-i2d-short" "$WORK/tiny-short.csv" 2 32 10000 "--disable_all_reencoding True" "${NGINX_PIDS[@]}"
    i2d "mem-i2d-long" "$WORK/tiny-long.csv" 2 32 10000 "--disable_all_reencoding True" "${NGINX_PIDS[@]}"
  fi
fi

echo "== summary"
"$PY" - "$WORK" <<'PY'
import glob, json, os, re, statistics, sys
w = sys.argv[1]
rows = {}
def steady(d, name):
    """Images/s inside the tool: ours from its summary, img2dataset from its shards' stats (first start to last end)."""
    try:
        if name.startswith(("ours", "py-ours", "mem-ours", "alt", "mem-alt")):
            return json.load(open(f"{d}/measure.json.stdout"))["downloads_per_second"]
        stats = [json.load(open(p)) for p in glob.glob(f"{d}/out/*_stats.json")]
        return sum(s["successes"] for s in stats) / (max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats))
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        return float("nan")
for d in sorted(glob.glob(f"{w}/runs/*")):
    name = os.path.basename(d)
    try:
        m = json.load(open(f"{d}/measure.json"))
    except (OSError, ValueError):
        continue
    images = int(open(f"{d}/images").read())
    m.update(name=name, images=images, rate=images / m["wall_s"], steady=steady(d, name),
             cpu_ms=1000 * (m["user_s"] + m["sys_s"]) / max(images, 1))
    rows.setdefault(re.sub(r"-r\d+$", "", name), []).append(m)
print(f"{'configuration':26} {'runs':>4} {'images':>7} {'img/s wall (median; all)':>30} {'img/s steady':>12} {'CPU ms/img':>10} "
      f"{'RSS MB':>7} {'PSS MB':>7} {'server CPU s':>12} {'load before':>16}")
med = {}
for key, ms in rows.items():
    ms.sort(key=lambda m: m["rate"])
    mid = ms[len(ms) // 2]
    med[key] = mid["rate"]
    allr = ", ".join(f"{m['rate']:.0f}" for m in ms)
    print(f"{key:26} {len(ms):>4} {mid['images']:>7} {mid['rate']:>8.0f} ({allr:>19}) {mid['steady']:>12.0f} {mid['cpu_ms']:>10.2f} "
          f"{mid['max_rss_kb']/1024:>7.0f} {mid['peak_tree_pss_kb']/1024:>7.0f} {mid['server_cpu_s']:>12.2f} "
          f"{' '.join(f'{x:.2f}' for x in mid['load_before']):>16}")
best_i2d = max((k for k in med if k.startswith("i2d-")), key=lambda k: med[k], default=None)
for ours in ("ours-default", "ours-c32-ph8", "alt-default", "alt-c32-ph8"):
    if best_i2d and ours in med:
        print(f"{ours} / best img2dataset ({best_i2d}), wall img/s: {med[ours] / med[best_i2d]:.2f}x")
for who in ("ours", "alt", "i2d"):
    if f"mem-{who}-short" not in rows or f"mem-{who}-long" not in rows:
        continue
    s, l = rows[f"mem-{who}-short"][0], rows[f"mem-{who}-long"][0]
    print(f"memory, {who}: {s['images']} URLs peak RSS {s['max_rss_kb']/1024:.0f} MB, {l['images']} URLs peak RSS {l['max_rss_kb']/1024:.0f} MB "
          f"(ratio {l['max_rss_kb']/max(s['max_rss_kb'],1):.2f}), summed PSS {s['peak_tree_pss_kb']/1024:.0f} and {l['peak_tree_pss_kb']/1024:.0f} MB; rates {s['rate']:.0f} and {l['rate']:.0f} img/s")
PY
