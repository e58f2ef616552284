#!/usr/bin/env python3
"""Signaling for the WebRTC comparison benchmark (crates/netlab/tests/webrtc_compare.rs).

Serves call.html and passes messages between the two pages of a call: offer, answer and ICE
candidates by POST /send?me=a&to=b (a JSON body) and GET /recv?me=b (a long poll answering
the messages waiting, a JSON array, within 20 s). The pages' statistics (POST /stats?me=a,
one JSON object a second) are appended as JSON lines, stamped with this machine's clock in
"t" (Unix seconds), to OUT/stats-a.jsonl; their console messages (POST /log?me=a) to
OUT/log-a.txt. GET /ready answers once serving.

    signal.py --listen 0.0.0.0:8080 --page DIR --out DIR
"""
import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PEERS = ("a", "b")


class State:
    def __init__(self, page, out):
        self.page = page
        self.out = out
        self.cond = threading.Condition()
        self.queues = {p: [] for p in PEERS}
        self.lock = threading.Lock()

    def send(self, to, msg):
        with self.cond:
            self.queues[to].append(msg)
            self.cond.notify_all()

    def recv(self, me, timeout):
        end = time.monotonic() + timeout
        with self.cond:
            while not self.queues[me]:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            msgs, self.queues[me] = self.queues[me], []
            return msgs

    def append(self, name, line):
        with self.lock, open(os.path.join(self.out, name), "a", encoding="utf-8") as f:
            f.write(line + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None

    def log_message(self, *args):
        pass

    def reply(self, code, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def me(self, query, key="me"):
        v = query.get(key, [""])[0]
        return v if v in PEERS else None

    def do_GET(self):
        url = urlparse(self.path)
        q = parse_qs(url.query)
        if url.path == "/ready":
            self.reply(200, "ok", "text/plain")
        elif url.path == "/call.html":
            with open(os.path.join(self.state.page, "call.html"), "rb") as f:
                self.reply(200, f.read(), "text/html; charset=utf-8")
        elif url.path == "/recv" and self.me(q):
            self.reply(200, json.dumps(self.state.recv(self.me(q), 20.0)))
        else:
            self.reply(404, "not found", "text/plain")

    def do_POST(self):
        url = urlparse(self.path)
        q = parse_qs(url.query)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        me = self.me(q)
        if me is None:
            self.reply(400, "me=a or me=b", "text/plain")
            return
        try:
            msg = json.loads(body or b"null")
        except ValueError:
            self.reply(400, "not JSON", "text/plain")
            return
        if url.path == "/send" and self.me(q, "to"):
            self.state.send(self.me(q, "to"), msg)
        elif url.path == "/stats":
            rec = {"t": time.time()}
            rec.update(msg if isinstance(msg, dict) else {"value": msg})
            self.state.append(f"stats-{me}.jsonl", json.dumps(rec))
        elif url.path == "/log":
            self.state.append(f"log-{me}.txt", f"{time.time():.3f} {msg}")
        else:
            self.reply(404, "not found", "text/plain")
            return
        self.reply(200, "{}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="0.0.0.0:8080")
    ap.add_argument("--page", required=True, help="directory holding call.html")
    ap.add_argument("--out", required=True, help="directory for stats-*.jsonl, log-*.txt")
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    Handler.state = State(a.page, a.out)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    print(f"serving on {a.listen}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
