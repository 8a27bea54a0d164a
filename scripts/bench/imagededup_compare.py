#!/usr/bin/env python3
"""Side-by-side: imagededup's brute-force Hamming search vs `pidiff-data bench near-dup`.

Both search the same hashes (written by our CLI: uniform 64-bit values, every 10th a planted copy
of its predecessor with 0..radius bits flipped) for every pair within the radius, on the same
machine in one run. imagededup runs in its own venv (not the repo's .venv):

    python3 -m venv ~/.cache/pidiff-data/imagededup-venv
    ~/.cache/pidiff-data/imagededup-venv/bin/pip install imagededup
    ~/.cache/pidiff-data/imagededup-venv/bin/python scripts/bench/imagededup_compare.py --n 100000

imagededup's search: HashEval(search_method="brute_force_cython") — each query against every
hash, in Cython over `num_dist_workers` processes — the search behind find_duplicates' default.
Our side: the multi-index hashing index (build + self-join), release build.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from imagededup.handlers.search.retrieval import HashEval
from imagededup.methods.hashing import Hashing


def main() -> int:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="number of hashes")
    ap.add_argument("--radius", type=int, default=8, help="Hamming radius in bits")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes/threads for both sides")
    ap.add_argument("--cli", default=os.path.join(repo, ".build/release/pidiff-data"), help="pidiff-data binary")
    ap.add_argument("--method", default="brute_force_cython", choices=["brute_force_cython", "brute_force", "bktree"])
    args = ap.parse_args()
    if not os.access(args.cli, os.X_OK):
        print(f"error: {args.cli} is not an executable; run `swift build -c release` first", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "hashes.txt")
        subprocess.run([args.cli, "bench", "near-dup", "--n", str(args.n), "--radius", str(args.radius),
                        "--write-hashes", path], check=True)
        with open(path) as f:
            hashes = [int(line) for line in f if line.strip()]

        # imagededup keys hashes by file name and stores them as 16 hex digits.
        encodings = {f"{i:08d}.jpg": format(h, "016x") for i, h in enumerate(hashes)}
        t0 = time.perf_counter()
        result = HashEval(test=encodings, queries=encodings, distance_function=Hashing.hamming_distance,
                          verbose=False, threshold=args.radius, search_method=args.method,
                          num_dist_workers=args.workers).retrieve_results(scores=True)
        theirs_s = time.perf_counter() - t0
        theirs_pairs = {tuple(sorted((int(q[:8]), int(k[:8])))) for q, found in result.items() for k, _ in found if k != q}

        t0 = time.perf_counter()
        out = subprocess.run([args.cli, "bench", "near-dup", "--hashes", path, "--radius", str(args.radius),
                              "--workers", str(args.workers), "--json"], check=True, capture_output=True, text=True).stdout
        ours_wall = time.perf_counter() - t0
        ours = json.loads(out)

    print(json.dumps({
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "hashes": args.n, "radius": args.radius, "workers": args.workers,
        "imagededup_method": args.method, "imagededup_seconds": round(theirs_s, 3), "imagededup_pairs": len(theirs_pairs),
        "ours_seconds": round(ours["total_seconds"], 3), "ours_process_wall_seconds": round(ours_wall, 3),
        "ours_pairs": ours["pairs_found"], "ours_chunks": ours["chunks"],
        "speedup": round(theirs_s / ours["total_seconds"], 1),
        "speedup_vs_our_whole_process": round(theirs_s / ours_wall, 1),
    }, indent=2))
    if len(theirs_pairs) != ours["pairs_found"]:
        print(f"error: pair counts differ (imagededup {len(theirs_pairs)}, ours {ours['pairs_found']})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
