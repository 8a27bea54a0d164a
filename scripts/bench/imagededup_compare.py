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
Its cost is exactly linear in the number of queries, and at 100k it runs for hours on 2 cores
(each query also rebuilds Python lists of all 100k names and hashes), so it is timed on the
first --queries hashes against all N and scaled to N queries; both figures are printed.
A vectorised NumPy brute force (XOR + bitwise_count in row blocks, all N × N) is timed in full
as a second, stronger baseline. Our side: the multi-index hashing index (build + self-join),
release build. All three must agree on the pairs they find.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
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
    ap.add_argument("--queries", type=int, default=2000, help="imagededup queries timed (scaled to --n)")
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
        queries = dict(list(encodings.items())[: args.queries])
        t0 = time.perf_counter()
        result = HashEval(test=encodings, queries=queries, distance_function=Hashing.hamming_distance,
                          verbose=False, threshold=args.radius, search_method=args.method,
                          num_dist_workers=args.workers).retrieve_results(scores=True)
        theirs_measured = time.perf_counter() - t0
        theirs_s = theirs_measured * args.n / len(queries)
        theirs_matches = sum(1 for q, found in result.items() for k, _ in found if k != q)

        # NumPy brute force: every pair, in row blocks so memory stays bounded.
        arr = np.array(hashes, dtype=np.uint64)
        t0 = time.perf_counter()
        numpy_pairs, first_q_matches, block = 0, 0, 256
        for i in range(0, len(arr), block):
            d = np.bitwise_count(arr[i:i + block, None] ^ arr[None, :])
            close = d <= args.radius
            rows = np.arange(i, min(i + block, len(arr)))[:, None]
            numpy_pairs += int(np.count_nonzero(close & (np.arange(len(arr))[None, :] > rows)))
            if i < args.queries:
                q_rows = close[: max(0, min(block, args.queries - i))]
                first_q_matches += int(np.count_nonzero(q_rows)) - q_rows.shape[0]  # minus each query itself
        numpy_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        out = subprocess.run([args.cli, "bench", "near-dup", "--hashes", path, "--radius", str(args.radius),
                              "--workers", str(args.workers), "--json"], check=True, capture_output=True, text=True).stdout
        ours_wall = time.perf_counter() - t0
        ours = json.loads(out)

    print(json.dumps({
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "hashes": args.n, "radius": args.radius, "workers": args.workers,
        "imagededup_method": args.method, "imagededup_queries_timed": len(queries),
        "imagededup_measured_seconds": round(theirs_measured, 3), "imagededup_seconds_scaled_to_n": round(theirs_s, 1),
        "imagededup_matches_in_timed_queries": theirs_matches, "numpy_matches_in_timed_queries": first_q_matches,
        "numpy_bruteforce_seconds": round(numpy_s, 3), "numpy_pairs": numpy_pairs,
        "ours_seconds": round(ours["total_seconds"], 3), "ours_process_wall_seconds": round(ours_wall, 3),
        "ours_pairs": ours["pairs_found"], "ours_chunks": ours["chunks"],
        "speedup_vs_imagededup": round(theirs_s / ours["total_seconds"], 1),
        "speedup_vs_numpy_bruteforce": round(numpy_s / ours["total_seconds"], 1),
        "speedup_vs_imagededup_counting_our_process_start": round(theirs_s / ours_wall, 1),
    }, indent=2))
    if numpy_pairs != ours["pairs_found"] or theirs_matches != first_q_matches:
        print(f"error: results differ (pairs: numpy {numpy_pairs}, ours {ours['pairs_found']}; matches of the timed queries: "
              f"imagededup {theirs_matches}, numpy {first_q_matches})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
