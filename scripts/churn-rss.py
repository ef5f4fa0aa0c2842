#!/usr/bin/env python3
"""Server RSS under booking churn, with one stalled watcher (docs/benchmarks.md,
"Memory under churn").

Starts a jetway binary on a fresh data dir, opens one WebSocket that subscribes to
the first FLIGHTS flights and then never reads (4 KiB receive buffer), runs
`jetway-load booking` (hold -> pay -> cancel, each a seat change) against it, and
samples the server's VmRSS every second.

    scripts/churn-rss.py --jetway target/release/jetway \
        --load target/release/jetway-load --changes 100000 [--server-arg=--cache-mb=64]

Prints one line per sample and a summary: RSS before the churn, at its end, the
maximum, and the growth per seat change.
"""
import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ws_frame(text):
    """A masked client text frame."""
    data = text.encode()
    mask = os.urandom(4)
    head = bytearray([0x81])
    n = len(data)
    if n < 126:
        head.append(0x80 | n)
    else:
        head.append(0x80 | 126)
        head += n.to_bytes(2, "big")
    return bytes(head) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def ws_connect(port, rcvbuf=None):
    """A WebSocket connection to the server, and the bytes read past the handshake."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    resp = b""
    while b"\r\n\r\n" not in resp:
        resp += s.recv(4096)
    head, rest = resp.split(b"\r\n\r\n", 1)
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise SystemExit(f"upgrade refused: {head!r}")
    return s, rest


def stalled_watcher(port, flights):
    """Subscribes to `flights` and never reads again."""
    s, _ = ws_connect(port, rcvbuf=4096)
    for i, f in enumerate(flights):
        req = {"jsonrpc": "2.0", "id": i, "method": "seats.subscribe", "params": {"flight_id": f}}
        s.sendall(ws_frame(json.dumps(req)))
    return s


def flight_ids(port):
    """The flight ids, through a one-shot raw request (flights.search)."""
    s, buf = ws_connect(port)
    s.sendall(ws_frame(json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "flights.search", "params": {"limit": 500}})))
    message = b""
    while True:
        while len(buf) < 2:
            buf += s.recv(65536)
        fin, n = buf[0] & 0x80, buf[1] & 0x7F
        off = 2
        if n == 126:
            n, off = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            n, off = int.from_bytes(buf[2:10], "big"), 10
        while len(buf) < off + n:
            buf += s.recv(65536)
        message += buf[off:off + n]
        buf = buf[off + n:]
        if not fin:
            continue
        msg, message = json.loads(message), b""
        if msg.get("id") == 1:
            s.close()
            return [f["flight_id"] for f in msg["result"]["flights"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jetway", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--changes", type=int, default=100_000,
                    help="seat changes (hold, pay and cancel each count one)")
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--flights", type=int, default=64, help="flights the stalled watcher watches")
    ap.add_argument("--no-watcher", action="store_true")
    ap.add_argument("--server-arg", action="append", default=[])
    ap.add_argument("--wrap", default="",
                    help="run the server under this command, e.g. heaptrack (RSS is then the wrapper's)")
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args()

    port = free_port()
    data = tempfile.mkdtemp(prefix="churn-rss-")
    server = subprocess.Popen(
        [*a.wrap.split(), a.jetway, "--listen", f"127.0.0.1:{port}", "--data-dir", data, *a.server_arg],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        run(a, server, port, url, data)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=300)
        subprocess.run(["rm", "-rf", data])


def run(a, server, port, url, data):
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
    flights = flight_ids(port)
    watcher = None if a.no_watcher else stalled_watcher(port, flights[: a.flights])
    time.sleep(1)
    before = rss_kib(server.pid)
    samples = []
    stop = threading.Event()

    def sample():
        t0 = time.time()
        while not stop.is_set():
            samples.append((time.time() - t0, rss_kib(server.pid)))
            stop.wait(1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    # each pair is a hold and a pay; a cancel follows: three changes per pair
    pairs = a.changes // 3
    t0 = time.time()
    out = subprocess.run(
        [a.load, "booking", "--url", url, "--pid", str(server.pid), "-c", str(a.users),
         "-d", str(a.timeout), "--max-pairs", str(pairs), "--json", "--quiet",
         "--timeout", str(int(a.timeout) + 60)],
        capture_output=True, text=True)
    elapsed = time.time() - t0
    stop.set()
    sampler.join()
    after = rss_kib(server.pid)
    try:
        res = json.loads(out.stdout)
    except json.JSONDecodeError:
        print(out.stdout, out.stderr, file=sys.stderr)
        raise
    changes = sum(m["ok"] for m in res["methods"].values())
    for t, r in samples[:: max(1, len(samples) // 20)]:
        print(f"t={t:6.1f}s rss={r / 1024:7.1f} MiB")
    peak = max(r for _, r in samples)
    du = subprocess.run(["du", "-sk", data], capture_output=True, text=True).stdout.split()[0]
    summary = {
        "seat_changes": changes,
        "seconds": round(elapsed, 1),
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "growth_mib": round((peak - before) / 1024, 1),
        "kib_per_change": round((peak - before) / max(changes, 1), 3),
        "data_dir_mib": round(int(du) / 1024, 1),
        "errors": res.get("errors"),
        "stalled_watcher": watcher is not None,
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
