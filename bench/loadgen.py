"""Bench: requests/s cms-loadgen sustains against a trivial loopback HTTP/1.1 keep-alive
server, beside wrk against the same server in the same run. Prints ONE JSON line.

The server (in its own processes, SO_REUSEPORT) answers each /work path with a response
precomputed at start, a correct one for the client's payload pool, so the client does its
full job (parse, JSON-decode, compare with the expected result) while the server does
almost nothing. Everything stays on 127.0.0.1.

    .venv/bin/python bench/loadgen.py [--seconds 5] [--conns 64] [--server-procs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client.engine import expected_result, make_payloads  # noqa: E402

COST = 1
PAYLOADS = 8


def _responses() -> dict[bytes, bytes]:
    out = {}
    for p in make_payloads(PAYLOADS):
        body = json.dumps({"result": expected_result(p, COST), "cost": COST, "hostname": "bench"}).encode()
        out[f"/work?payload={p}&cost={COST}".encode()] = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return out


class _Proto(asyncio.Protocol):
    responses: dict[bytes, bytes] = {}
    notfound = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"

    def connection_made(self, t):
        self.t = t
        self.buf = b""

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        out = []
        for _ in range(1000):
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            sp = buf.find(b" ", 4, end)
            out.append(self.responses.get(buf[4:sp], self.notfound))
            buf = buf[end + 4:]
        self.buf = buf
        if out:
            self.t.write(b"".join(out))


def _serve(port: int, ready, cpus) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    _Proto.responses = _responses()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(loop.create_server(_Proto, sock=sock))
    ready.set()
    loop.run_forever()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _pin(cpus) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus and shutil.which("taskset") else []


def run_wrk(port: int, seconds: float, conns: int, threads: int, cpus) -> float | None:
    if not shutil.which("wrk"):
        return None
    url = f"http://127.0.0.1:{port}/work?payload={make_payloads(1)[0]}&cost={COST}"
    r = subprocess.run(_pin(cpus) + ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", url],
                       capture_output=True, text=True, timeout=seconds + 30)
    m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    return float(m.group(1)) if m else None


def run_client(port: int, seconds: float, conns: int, cpus) -> dict:
    cmd = _pin(cpus) + [sys.executable, "-m", "client.loadgen", "--replica", f"127.0.0.1:{port}", "--concurrency", str(conns),
           "--cost", str(COST), "--payloads", str(PAYLOADS), "--duration", f"{seconds:g}", "--quiet",
           "--max-conns", str(conns)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                       cwd=str(Path(__file__).resolve().parent.parent))
    if r.returncode != 0:
        raise SystemExit(f"cms-loadgen failed ({r.returncode}): {r.stderr.strip()}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--server-procs", type=int, default=1)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--no-pin", action="store_true",
                    help="do not pin (default with 2+ CPUs: server on CPU 0, wrk and client each on the others)")
    a = ap.parse_args()
    ncpu = len(os.sched_getaffinity(0))
    pin = not a.no_pin and ncpu >= 2
    all_cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {all_cpus[0]} if pin else None
    load_cpus = set(all_cpus[1:]) if pin else None
    port = _free_port()
    ctx = mp.get_context("fork")
    servers = []
    for _ in range(a.server_procs):
        ev = ctx.Event()
        p = ctx.Process(target=_serve, args=(port, ev, server_cpus), daemon=True)
        p.start()
        if not ev.wait(10):
            raise SystemExit("bench server did not start")
        servers.append(p)
    try:
        wrk = run_wrk(port, a.seconds, a.conns, a.wrk_threads, load_cpus)
        s = run_client(port, a.seconds, a.conns, load_cpus)
    finally:
        for p in servers:
            p.terminate()
            p.join(5)
    client_rps = s["completed"] / s["duration_s"] if s["duration_s"] else 0.0
    print(json.dumps({
        "bench": "loadgen", "cpus": os.cpu_count(), "seconds": a.seconds, "conns": a.conns,
        "server_procs": a.server_procs, "wrk_threads": a.wrk_threads,
        "pinned": {"server_cpus": sorted(server_cpus), "load_cpus": sorted(load_cpus)} if pin else None,
        "client_req_s": round(client_rps, 1), "wrk_req_s": wrk,
        "ratio": round(client_rps / wrk, 3) if wrk else None,
        "client_errors": s["errors"], "client_accounted": s["accounted"],
        "client_p50_ms": s["latency_ms"]["p50"], "client_p99_ms": s["latency_ms"]["p99"],
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
