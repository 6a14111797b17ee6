"""Bench: requests/s cms-loadgen sustains against a trivial loopback HTTP/1.1 keep-alive
server, beside wrk against the same server in the same run. Prints ONE JSON line.

The server (its own processes, SO_REUSEPORT; a small C epoll server compiled on the spot
when a C compiler is there, else Python asyncio) answers each /work path with a response
precomputed at start, a correct one for the client's payload pool, so the client does its
full job (parse, JSON-decode, compare with the expected result) while the server does
almost nothing. Everything stays on 127.0.0.1.

    .venv/bin/python bench/loadgen.py [--seconds 5] [--conns 64] [--server auto|c|python] [--server-procs 1]

With 2+ CPUs the server is pinned to the first CPU and wrk, then the client, to the others,
so "client_req_s" is what one client process does on one core.
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
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client.engine import make_payloads  # noqa: E402
from cms.netutil import free_port  # noqa: E402
from guest.cms_work import result as expected_result  # noqa: E402

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


_C_SERVER = r"""
/* Trivial HTTP/1.1 keep-alive server for the bench: epoll, one thread, answers each request
   with a response chosen by its path from a table compiled in. Binds 127.0.0.1 only. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>
%(table)s
#define BUFSZ 65536
struct conn { int fd; int len; char buf[BUFSZ]; };
static const char *lookup(const char *p, int n, int *rlen) {
    for (int i = 0; i < NPATHS; i++)
        if ((int)strlen(PATHS[i]) == n && memcmp(PATHS[i], p, n) == 0) { *rlen = strlen(RESPS[i]); return RESPS[i]; }
    *rlen = strlen(NOTFOUND); return NOTFOUND;
}
int main(int argc, char **argv) {
    int port = atoi(argv[1]);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(ls, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1024)) { perror("bind"); return 1; }
    fcntl(ls, F_SETFL, O_NONBLOCK);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("ready\n"); fflush(stdout);
    struct epoll_event evs[256];
    static char out[BUFSZ * 4];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept(ls, NULL, NULL)) >= 0) {
                    fcntl(fd, F_SETFL, O_NONBLOCK);
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c); c->fd = fd;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            int r = read(c->fd, c->buf + c->len, BUFSZ - c->len);
            if (r <= 0) { if (r < 0 && errno == EAGAIN) continue; close(c->fd); free(c); continue; }
            c->len += r;
            int olen = 0, start = 0;
            for (;;) {
                char *end = memmem(c->buf + start, c->len - start, "\r\n\r\n", 4);
                if (!end) break;
                char *p = c->buf + start + 4, *sp = memchr(p, ' ', end - p);
                int rl; const char *resp = lookup(p, sp ? sp - p : 0, &rl);
                if (olen + rl <= (int)sizeof out) { memcpy(out + olen, resp, rl); olen += rl; }
                start = end - c->buf + 4;
            }
            memmove(c->buf, c->buf + start, c->len - start); c->len -= start;
            if (c->len == BUFSZ) { close(c->fd); free(c); continue; }
            for (int off = 0; off < olen; ) {
                int w = write(c->fd, out + off, olen - off);
                if (w <= 0) break;
                off += w;
            }
        }
    }
}
"""


def _c_literal(b: bytes) -> str:
    return '"' + "".join(chr(c) if 32 <= c < 127 and chr(c) not in '"\\' else f"\\x{c:02x}\"\"" for c in b) + '"'


def build_c_server(workdir: str) -> str | None:
    """Compile the C bench server (a few kB) if a C compiler is present; None otherwise."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    resp = _responses()
    table = ("#define NPATHS %d\n" % len(resp)
             + "static const char *PATHS[] = {" + ",".join(_c_literal(p) for p in resp) + "};\n"
             + "static const char *RESPS[] = {" + ",".join(_c_literal(r) for r in resp.values()) + "};\n"
             + "static const char *NOTFOUND = " + _c_literal(_Proto.notfound) + ";\n")
    src = os.path.join(workdir, "bench_server.c")
    exe = os.path.join(workdir, "bench_server")
    with open(src, "w") as fh:
        fh.write(_C_SERVER % {"table": table})
    r = subprocess.run([cc, "-O2", "-o", exe, src], capture_output=True, text=True, timeout=60)
    return exe if r.returncode == 0 else None


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
    ap.add_argument("--server", choices=("auto", "c", "python"), default="auto",
                    help="the trivial server: C (epoll, compiled here with cc) or Python asyncio; auto: C if it builds")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--no-pin", action="store_true",
                    help="do not pin (default with 2+ CPUs: server on CPU 0, wrk and client each on the others)")
    a = ap.parse_args()
    ncpu = len(os.sched_getaffinity(0))
    pin = not a.no_pin and ncpu >= 2
    all_cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {all_cpus[0]} if pin else None
    load_cpus = set(all_cpus[1:]) if pin else None
    load_before = os.getloadavg()[0]
    port = free_port()
    servers: list = []
    kind = a.server
    tmp = tempfile.mkdtemp(prefix="cms-bench-")
    exe = build_c_server(tmp) if kind in ("auto", "c") else None
    if kind == "c" and exe is None:
        raise SystemExit("no C compiler, or the C server did not build; try --server python")
    kind = "c" if exe else "python"
    for _ in range(a.server_procs):
        if exe:
            p = subprocess.Popen(_pin(server_cpus) + [exe, str(port)], stdout=subprocess.PIPE, text=True)
            if p.stdout.readline().strip() != "ready":
                raise SystemExit("bench server did not start")
        else:
            ev = mp.get_context("fork").Event()
            p = mp.get_context("fork").Process(target=_serve, args=(port, ev, server_cpus), daemon=True)
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
            p.wait(5) if isinstance(p, subprocess.Popen) else p.join(5)
        shutil.rmtree(tmp, ignore_errors=True)
    client_rps = s["completed"] / s["duration_s"] if s["duration_s"] else 0.0
    print(json.dumps({
        "bench": "loadgen", "cpus": os.cpu_count(), "seconds": a.seconds, "conns": a.conns,
        "server": kind, "server_procs": a.server_procs, "wrk_threads": a.wrk_threads,
        "pinned": {"server_cpus": sorted(server_cpus), "load_cpus": sorted(load_cpus)} if pin else None,
        "client_req_s": round(client_rps, 1), "wrk_req_s": wrk,
        "ratio": round(client_rps / wrk, 3) if wrk else None,
        "client_errors": s["errors"], "client_accounted": s["accounted"],
        "client_p50_ms": s["latency_ms"]["p50"], "client_p99_ms": s["latency_ms"]["p99"],
        # other work on the machine depresses both figures; the ratio is the steadier number
        "loadavg_1m_before": round(load_before, 2),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
