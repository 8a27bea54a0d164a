#!/usr/bin/env python3
"""Helpers for scripts/bench/fetch-compare.sh (Pillow; nothing here is committed data).

  photos DIR N [--seed S] [--sources DIR]
      N distinct web-photo-like JPEGs DIR/pNNNNNN.jpg: random crops of the sample photos, rescaled
      to a long side of 400-2000 px and encoded at quality 70-92, kept between 30 and 400 KB.
      Every file carries its index in a JPEG comment, so no two have the same bytes. Reused when
      DIR/.done says the same N and seed.
  tiny DIR N
      N distinct ~1 KB JPEGs DIR/NNN/tNNNNNN.jpg (one 32x32 image, the index in a comment): for
      the memory run, where the list length matters and the bytes do not.
  list OUT --kind photos|tiny --n N --port P [--hosts H] [--per-identity K]
      A CSV URL list (identity,url) over H loopback hosts 127.0.0.1..127.0.0.H, round robin.
  measure OUT.json [--server-pid PID ...] -- CMD ...
      Runs CMD under /usr/bin/time -v; records wall time, user/sys CPU, /usr/bin/time's peak RSS
      (the largest single process), the peak of the summed PSS of CMD's process tree (sampled every
      50 ms; PSS counts pages shared by forked workers once), the load average before and after, and the CPU the server processes used meanwhile.
  stats DIR
      Size distribution of the files under DIR (count, total, mean, p10/p50/p90, min, max).
"""
import argparse
import glob
import io
import json
import os
import random
import re
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def _sources(folder):
    from PIL import Image
    images = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*"), recursive=True)):
        if not os.path.isfile(path):
            continue
        try:
            im = Image.open(path)
            im.load()
        except Exception:  # noqa: BLE001 - anything Pillow cannot read is just not a source
            continue
        if im.mode != "RGB":
            rgba = im.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.split()[3])
            im = bg
        images.append(im)
    if not images:
        sys.exit(f"no readable images under {folder}")
    return images


def _encode(im, quality, comment):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, comment=comment, optimize=False)
    return buf.getvalue()


def photos(args):
    from PIL import Image, ImageEnhance
    stamp = {"n": args.n, "seed": args.seed, "version": 1}
    done = os.path.join(args.dir, ".done")
    if os.path.exists(done) and json.load(open(done)) == stamp:
        return
    os.makedirs(args.dir, exist_ok=True)
    sources = _sources(args.sources)
    rng = random.Random(args.seed)
    lo, hi = 30_000, 400_000
    for i in range(args.n):
        src = sources[i % len(sources)]
        w, h = src.size
        for _ in range(8):
            cw, ch = int(w * rng.uniform(0.55, 1.0)), int(h * rng.uniform(0.55, 1.0))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            crop = src.crop((x, y, x + cw, y + ch))
            # Long side log-uniform in 400..2000 px: most web photos are 0.3-2 MP.
            long_side = int(round(400 * (5 ** rng.random())))
            scale = long_side / max(cw, ch)
            size = (max(16, int(cw * scale)), max(16, int(ch * scale)))
            im = crop.resize(size, Image.BILINEAR)
            im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.85, 1.15))
            data = _encode(im, rng.randint(70, 92), f"pidiff fetch bench {i}".encode())
            if lo <= len(data) <= hi:
                break
        with open(os.path.join(args.dir, f"p{i:06d}.jpg"), "wb") as f:
            f.write(data)
    json.dump(stamp, open(done, "w"))


def _with_comment(jpeg, text):
    """The JPEG with a COM segment right after SOI (bytes differ, pixels do not)."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def tiny(args):
    from PIL import Image
    stamp = {"n": args.n, "version": 1}
    done = os.path.join(args.dir, ".done")
    if os.path.exists(done) and json.load(open(done)) == stamp:
        return
    im = Image.new("RGB", (32, 32))
    im.putdata([((x * 8) % 256, (y * 8) % 256, 128) for y in range(32) for x in range(32)])
    base = _encode(im, 85, None)
    for i in range(args.n):
        sub = os.path.join(args.dir, f"{i // 1000:03d}")
        if i % 1000 == 0:
            os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"t{i:06d}.jpg"), "wb") as f:
            f.write(_with_comment(base, f"pidiff fetch bench tiny {i}"))
    json.dump(stamp, open(done, "w"))


def url_list(args):
    with open(args.out, "w") as f:
        f.write("identity,url\n")
        for i in range(args.n):
            host = f"127.0.0.{1 + i % args.hosts}"
            path = f"p{i:06d}.jpg" if args.kind == "photos" else f"{i // 1000:03d}/t{i:06d}.jpg"
            f.write(f"id{i // args.per_identity:05d},http://{host}:{args.port}/{args.prefix}{path}\n")


def _tree(pid):
    """pid and all its descendants (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _pss_kb(pid):
    """Proportional set size: pages shared between forked workers are counted once in a sum."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except OSError:
        return 0


def _loadavg():
    return [float(x) for x in open("/proc/loadavg").read().split()[:3]]


def measure(args):
    cmd = args.cmd
    if not cmd:
        sys.exit("measure: give the command after --")
    time_log = args.out + ".time"
    server_before = sum(_cpu_ticks(p) for p in args.server_pid)
    load_before = _loadavg()
    start = time.monotonic()
    with open(args.out + ".stdout", "wb") as out, open(args.out + ".log", "wb") as log:
        proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", time_log] + cmd, stdout=out, stderr=log)
        peak_tree = 0
        while proc.poll() is None:
            peak_tree = max(peak_tree, sum(_pss_kb(p) for p in _tree(proc.pid)))
            time.sleep(0.05)
    wall = time.monotonic() - start
    text = open(time_log).read()

    def field(name):
        m = re.search(re.escape(name) + r":\s*([0-9.:]+)", text)
        return m.group(1) if m else None

    result = {
        "exit": proc.returncode,
        "wall_s": round(wall, 3),
        "user_s": float(field("User time (seconds)") or 0),
        "sys_s": float(field("System time (seconds)") or 0),
        "max_rss_kb": int(field("Maximum resident set size (kbytes)") or 0),
        "peak_tree_pss_kb": peak_tree,
        "load_before": load_before,
        "load_after": _loadavg(),
        "server_cpu_s": round((sum(_cpu_ticks(p) for p in args.server_pid) - server_before) / HZ, 2),
    }
    json.dump(result, open(args.out, "w"))
    print(json.dumps(result))
    sys.exit(0 if proc.returncode == 0 else 1)


def stats(args):
    sizes = sorted(os.path.getsize(p) for p in glob.glob(os.path.join(args.dir, "**", "*.jp*g"), recursive=True))
    if not sizes:
        print(json.dumps({"count": 0}))
        return
    q = lambda f: sizes[min(len(sizes) - 1, int(f * len(sizes)))]  # noqa: E731
    print(json.dumps({"count": len(sizes), "total_bytes": sum(sizes), "mean_kb": round(sum(sizes) / len(sizes) / 1000, 1),
                      "p10_kb": round(q(0.1) / 1000, 1), "p50_kb": round(q(0.5) / 1000, 1), "p90_kb": round(q(0.9) / 1000, 1),
                      "min_kb": round(sizes[0] / 1000, 1), "max_kb": round(sizes[-1] / 1000, 1)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("photos")
    p.add_argument("dir")
    p.add_argument("n", type=int)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sources", default=os.path.join(os.environ.get("PIDIFF_CACHE", os.path.expanduser("~/.cache/pidiff-data")), "sample", "identities"))
    p.set_defaults(func=photos)
    p = sub.add_parser("tiny")
    p.add_argument("dir")
    p.add_argument("n", type=int)
    p.set_defaults(func=tiny)
    p = sub.add_parser("list")
    p.add_argument("out")
    p.add_argument("--kind", choices=["photos", "tiny"], required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hosts", type=int, default=1)
    p.add_argument("--prefix", default="", help="path before the file name, e.g. files/ for loopback_http.py")
    p.add_argument("--per-identity", type=int, default=20)
    p.set_defaults(func=url_list)
    p = sub.add_parser("measure")
    p.add_argument("out")
    p.add_argument("--server-pid", type=int, action="append", default=[])
    p.set_defaults(func=measure)
    p = sub.add_parser("stats")
    p.add_argument("dir")
    p.set_defaults(func=stats)
    argv, cmd = sys.argv[1:], []
    if "--" in argv:  # measure's command, after --
        argv, cmd = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = ap.parse_args(argv)
    args.cmd = cmd
    args.func(args)


if __name__ == "__main__":
    main()
