#!/usr/bin/env python3
"""A loopback HTTP server with the misbehaviours `pidiff-data fetch` must survive, for its tests
and its benchmark (standard library only).

usage: loopback_http.py --root DIR [--port 0] [--threads]
Prints {"port": N} on the first stdout line once it listens. Routes (GET):
  /files/NAME                  ROOT/NAME (Content-Type from the extension)
  /unique/I/NAME               ROOT/NAME with I bytes appended after it (distinct content per I)
  /gzip/NAME                   ROOT/NAME, Content-Encoding: gzip
  /as-jpeg/NAME                ROOT/NAME served as image/jpeg whatever it is
  /status/CODE                 that status
  /flaky/KEY/N/NAME            500 for the first N requests of KEY, then ROOT/NAME
  /ratelimit/KEY/SECONDS/NAME  429 with Retry-After: SECONDS on the first request of KEY, then ROOT/NAME
  /drip/SECONDS                a JPEG start, then one byte every 0.1 s for SECONDS (Content-Length larger)
  /endless                     chunked body that never ends (a JPEG start, then zeros)
  /redirect/N/NAME             N redirects, then ROOT/NAME
  /loop/a, /loop/b             redirect to each other
  /slow/MS/I/NAME              waits MS milliseconds, then /unique/I/NAME
  /robots/DIRECTIVES/NAME      ROOT/NAME with X-Robots-Tag: DIRECTIVES (`+` for spaces)
  /truncated/NAME              the first half of ROOT/NAME (a complete response of a cut file)
  /gzbomb                      gzip of a JPEG start and 64 MB of zeros (Content-Encoding: gzip)
  /hits                        JSON {path: requests so far}
"""
import argparse
import gzip
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".html": "text/html"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits = {}
    counters = {}
    lock = threading.Lock()
    cache = {}

    def log_message(self, *args):
        pass

    def body_of(self, name):
        data = Handler.cache.get(name)
        if data is None:
            path = os.path.join(self.server.root, os.path.basename(name))
            with open(path, "rb") as f:
                data = f.read()
            Handler.cache[name] = data
        return data

    def send(self, status, body=b"", headers=None, content_type="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_file(self, name, extra=b"", content_type=None, encoding=None, headers=None):
        try:
            body = self.body_of(name) + extra
        except OSError:
            return self.send(404, b"no such file")
        headers = dict(headers or {})
        if encoding == "gzip":
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        self.send(200, body, headers, content_type or TYPES.get(os.path.splitext(name)[1].lower(), "application/octet-stream"))

    def count(self, key):
        with Handler.lock:
            Handler.counters[key] = Handler.counters.get(key, 0) + 1
            return Handler.counters[key]

    def do_GET(self):
        with Handler.lock:
            Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        parts = self.path.strip("/").split("/")
        route, args = parts[0], parts[1:]
        try:
            if route == "files":
                return self.send_file(args[0])
            if route == "unique":
                return self.send_file(args[1], extra=b"\0" * int(args[0]))
            if route == "gzip":
                return self.send_file(args[0], encoding="gzip")
            if route == "as-jpeg":
                return self.send_file(args[0], content_type="image/jpeg")
            if route == "status":
                return self.send(int(args[0]), b"status %s" % args[0].encode())
            if route == "flaky":
                key, n, name = args[0], int(args[1]), args[2]
                if self.count("flaky/" + key) <= n:
                    return self.send(500, b"try again")
                return self.send_file(name)
            if route == "ratelimit":
                key, seconds, name = args[0], args[1], args[2]
                if self.count("ratelimit/" + key) == 1:
                    return self.send(429, b"slow down", {"Retry-After": seconds})
                return self.send_file(name)
            if route == "drip":
                seconds = float(args[0])
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                self.wfile.write(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
                end = time.time() + seconds
                while time.time() < end:
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.1)
                self.close_connection = True
                return
            if route == "endless":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"\xff\xd8\xff\xe0" + b"\0" * 65532
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    chunk = b"\0" * 65536
            if route == "redirect":
                n, name = int(args[0]), args[1]
                if n <= 0:
                    return self.send_file(name)
                return self.send(302, b"", {"Location": "/redirect/%d/%s" % (n - 1, name)})
            if route == "loop":
                return self.send(302, b"", {"Location": "/loop/" + ("b" if args[0] == "a" else "a")})
            if route == "slow":
                time.sleep(int(args[0]) / 1000)
                return self.send_file(args[2], extra=b"\0" * int(args[1]))
            if route == "robots":
                return self.send_file(args[1], headers={"X-Robots-Tag": args[0].replace("+", " ")})
            if route == "truncated":
                body = self.body_of(args[0])
                return self.send(200, body[: len(body) // 2], content_type="image/jpeg")
            if route == "gzbomb":
                bomb = Handler.cache.get("//gzbomb")
                if bomb is None:
                    bomb = Handler.cache["//gzbomb"] = gzip.compress(b"\xff\xd8\xff\xe0" + bytes(64 << 20), 1)
                return self.send(200, bomb, {"Content-Encoding": "gzip"}, "image/jpeg")
            if route == "hits":
                with Handler.lock:
                    body = json.dumps(Handler.hits, sort_keys=True).encode()
                return self.send(200, body, content_type="application/json")
            return self.send(404, b"unknown route")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.request_queue_size = 1024
    server.root = args.root
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
