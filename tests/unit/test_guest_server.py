"""The guest server (guest/cms_guest_server.py) on 127.0.0.1, no VM.

Each test class starts the server as a subprocess on a free port (what systemd does in the
image), talks HTTP/1.1 to it with http.client, and stops it with SIGTERM. Every wait is
bounded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from guest.cms_work import result as expected
from tests.support import free_port
from cms.lab.realstack import stop_process

SERVER = Path(__file__).resolve().parents[2] / "guest" / "cms_guest_server.py"
START_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 30.0


class Server:
    def __init__(self, workers: int) -> None:
        self.port = free_port()
        env = dict(os.environ, CMS_GUEST_PORT=str(self.port), CMS_GUEST_BIND="127.0.0.1",
                   CMS_GUEST_WORKERS=str(workers), CMS_GUEST_GRACE_S="2")
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                status, _, body = self.request("GET", "/health", timeout=2)
                if status == 200 and body == {"status": "ok"}:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"guest server did not become healthy: {self.output}")
            time.sleep(0.05)

    def connection(self, timeout: float = REQUEST_TIMEOUT_S) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, timeout: float = REQUEST_TIMEOUT_S):
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, dict(resp.getheaders()), json.loads(raw) if raw else None
        finally:
            conn.close()

    def stop(self) -> int:
        rc = stop_process(self.proc)
        self.output = self.proc.stdout.read() if self.proc.stdout else ""
        return rc

    output = ""


@pytest.fixture(scope="module")
def server():
    s = Server(workers=2)
    yield s
    s.stop()


# --- the work contract -----------------------------------------------------------------

def test_the_shared_work_definition_is_the_documented_contract():
    """guest.cms_work is what the server, the client and the doubles all use; pin it to the
    contract written in the server's docstring, so a change to it cannot go unnoticed."""
    assert expected("x", 3) == hashlib.pbkdf2_hmac("sha256", b"x", b"cms-guest", 3).hex()
    assert expected("ünï", 1) == hashlib.pbkdf2_hmac("sha256", "ünï".encode(), b"cms-guest", 1).hex()


@pytest.mark.parametrize("payload,cost", [("hello", 1), ("", 7), ("ünïcode ✓", 1000), ("x" * 4096, 3)])
def test_get_work_result_is_pbkdf2(server, payload, cost):
    from urllib.parse import urlencode
    status, headers, body = server.request("GET", "/work?" + urlencode({"payload": payload, "cost": cost}))
    assert status == 200, body
    assert body == {"result": expected(payload, cost), "cost": cost, "hostname": socket.gethostname()}
    assert headers["Content-Type"] == "application/json"


def test_post_work_result_is_pbkdf2(server):
    data = json.dumps({"payload": "abc", "cost": 2500}).encode()
    status, _, body = server.request("POST", "/work", data, {"Content-Type": "application/json"})
    assert status == 200
    assert body["result"] == expected("abc", 2500)
    assert body["cost"] == 2500


def test_keep_alive_serves_many_requests_on_one_connection(server):
    conn = server.connection()
    try:
        for i in range(20):
            conn.request("GET", f"/work?payload=k{i}&cost=10")
            resp = conn.getresponse()
            assert resp.status == 200
            assert json.loads(resp.read())["result"] == expected(f"k{i}", 10)
            assert not resp.will_close
    finally:
        conn.close()


@pytest.mark.parametrize("query,fragment", [
    ("payload=a&cost=0", "from 1 to 1000000"),
    ("payload=a&cost=1000001", "from 1 to 1000000"),
    ("payload=a&cost=-5", "from 1 to 1000000"),
    ("payload=a&cost=ten", "integer"),
    ("payload=a&cost=", "integer"),
    ("payload=a", "missing 'cost'"),
    ("cost=5", "missing 'payload'"),
    ("payload=" + "y" * 4097 + "&cost=1", "longer than 4096"),
])
def test_get_work_rejects_bad_input(server, query, fragment):
    status, _, body = server.request("GET", "/work?" + query)
    assert status == 400
    assert fragment in body["error"]


@pytest.mark.parametrize("doc,fragment", [
    ({"payload": "a", "cost": 0}, "from 1 to 1000000"),
    ({"payload": "a", "cost": 1.5}, "integer"),
    ({"payload": "a", "cost": True}, "integer"),
    ({"payload": "a", "cost": "12"}, None),  # a numeric string is accepted, like the query form
    ({"payload": 5, "cost": 1}, "must be a string"),
    ({"cost": 1}, "missing 'payload'"),
    ({"payload": "a"}, "missing 'cost'"),
    (["payload", 1], "JSON object"),
    ({"payload": "é" * 2049, "cost": 1}, "longer than 4096"),  # 4098 bytes in UTF-8
])
def test_post_work_rejects_bad_input(server, doc, fragment):
    status, _, body = server.request("POST", "/work", json.dumps(doc).encode())
    if fragment is None:
        assert status == 200 and body["result"] == expected("a", 12)
        return
    assert status == 400
    assert fragment in body["error"]


def test_bad_json_is_400(server):
    status, _, body = server.request("POST", "/work", b"{not json")
    assert status == 400
    assert body == {"error": "body is not valid JSON"}


def test_huge_body_is_413_and_the_server_lives_on(server):
    status, headers, body = server.request("POST", "/work", b"x" * 70000)
    assert status == 413
    assert "65536" in body["error"]
    assert headers.get("Connection") == "close"
    assert server.request("GET", "/health")[0] == 200


def test_body_at_the_limit_is_read(server):
    doc = json.dumps({"payload": "p", "cost": 3}).encode()
    data = doc + b" " * (65536 - len(doc))
    status, _, body = server.request("POST", "/work", data)
    assert status == 200 and body["result"] == expected("p", 3)


def test_unknown_path_is_404_json(server):
    status, _, body = server.request("GET", "/nope")
    assert status == 404
    assert "error" in body


@pytest.mark.parametrize("method,path", [("DELETE", "/work"), ("PUT", "/work"), ("POST", "/health"),
                                         ("POST", "/status"), ("PATCH", "/status")])
def test_wrong_method_is_405_json(server, method, path):
    status, headers, body = server.request(method, path, b"{}")
    assert status == 405
    assert "not allowed" in body["error"]
    assert "GET" in headers["Allow"]


def test_garbage_request_line_does_not_crash(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n")[0]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /work?payload=a&cost=1 HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        s.settimeout(10)
        assert s.recv(4096).split(b"\r\n")[0].startswith(b"HTTP/1.1 ")
    assert server.request("GET", "/health")[0] == 200


# --- /status, /health ------------------------------------------------------------------

def test_status_counts_served_work(server):
    _, _, before = server.request("GET", "/status")
    for i in range(5):
        assert server.request("GET", f"/work?payload=s{i}&cost=5")[0] == 200
    assert server.request("GET", "/work?payload=s&cost=0")[0] == 400  # not served
    _, _, after = server.request("GET", "/status")
    assert after["served"] - before["served"] == 5
    assert after["in_flight"] == 0
    assert after["workers"] == 2
    assert after["pid"] == server.proc.pid
    assert after["hostname"] == socket.gethostname()
    assert isinstance(after["unit"], str)
    assert after["uptime_s"] >= before["uptime_s"] > 0
    assert set(after) == {"served", "in_flight", "in_flight_s", "latency", "uptime_s", "hostname", "unit", "workers",
                          "cpus", "mem_total_kib", "pid"}
    with open("/proc/meminfo") as fh:
        assert after["mem_total_kib"] == int(fh.readline().split()[1])   # MemTotal is its first line
    assert after["cpus"] == len(os.sched_getaffinity(server.proc.pid))


def test_status_latency_histogram_and_in_flight_time(server):
    """Two polls around answers the client timed: the histogram counted exactly the answers
    served between them, its sum and the in-flight integral are the server's share of the
    client's times, and cms.histogram reads the interval from the two polls."""
    from cms.histogram import between, parse
    before = parse(server.request("GET", "/status")[2])
    took: list[float] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        t0 = time.monotonic()
        assert server.request("GET", f"/work?payload=lat{i}&cost=100000", timeout=60)[0] == 200
        with lock:
            took.append(time.monotonic() - t0)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert server.request("GET", "/work?payload=x&cost=0")[0] == 400   # not served, not timed
    after = parse(server.request("GET", "/status")[2])
    assert before is not None and after is not None and len(took) == 4
    f = between(before, after)
    assert f is not None and f.completed == 4 and f.buckets[-1] == 4
    assert after.buckets[-1] == after.served            # every served answer is in the histogram
    assert 0 < after.sum_s - before.sum_s <= sum(took)
    assert 0 < after.in_flight_s - before.in_flight_s <= sum(took)
    assert 0 < f.in_flight * f.seconds <= sum(took)
    slowest_bucket = min((b for b in after.bounds_s if b >= max(took)), default=after.bounds_s[-1])
    assert 0 < f.p95_s <= slowest_bucket                  # at most the bound of the slowest one's bucket


def test_health_ok(server):
    assert server.request("GET", "/health")[:3:2] == (200, {"status": "ok"})


# --- parallelism ---------------------------------------------------------------------------

def test_two_slow_requests_run_on_two_workers_at_once(server):
    """Both workers take one request each and compute at the same time."""
    cost = 400_000
    results: dict[int, tuple] = {}
    in_flight_seen: list[int] = []
    barrier = threading.Barrier(2)

    def call(i: int) -> None:
        barrier.wait(timeout=10)
        t0 = time.monotonic()
        status, headers, body = server.request("GET", f"/work?payload=par{i}&cost={cost}", timeout=120)
        results[i] = (status, int(headers["X-Worker-Pid"]), body, t0, time.monotonic())

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    # While they run, /status (answered by whichever worker) sees both in flight.
    deadline = time.monotonic() + 60
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        in_flight_seen.append(server.request("GET", "/status", timeout=10)[2]["in_flight"])
        time.sleep(0.01)
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2
    (s0, pid0, b0, start0, end0), (s1, pid1, b1, start1, end1) = results[0], results[1]
    assert (s0, s1) == (200, 200)
    assert b0["result"] == expected("par0", cost) and b1["result"] == expected("par1", cost)
    assert pid0 != pid1, "both requests went to the same worker"
    assert max(start0, start1) < min(end0, end1), "the requests did not overlap"
    assert max(in_flight_seen) == 2


def test_parallel_load_keeps_counters_consistent(server):
    _, _, before = server.request("GET", "/status")
    errors: list[str] = []

    def client(n: int) -> None:
        conn = server.connection()
        try:
            for i in range(10):
                conn.request("POST", "/work", json.dumps({"payload": f"{n}-{i}", "cost": 50}).encode())
                resp = conn.getresponse()
                body = json.loads(resp.read())
                if resp.status != 200 or body["result"] != expected(f"{n}-{i}", 50):
                    errors.append(f"{resp.status} {body}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    _, _, after = server.request("GET", "/status")
    assert after["served"] - before["served"] == 80
    assert after["in_flight"] == 0


# --- lifecycle ---------------------------------------------------------------------------

def test_sigterm_stops_every_worker():
    s = Server(workers=3)
    pids = set()
    for _ in range(30):
        pids.add(int(s.request("GET", "/health")[1]["X-Worker-Pid"]))
    assert s.stop() == 0
    assert "stopped" in s.output
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_killed_worker_is_replaced():
    s = Server(workers=1)
    try:
        pid = int(s.request("GET", "/health")[1]["X-Worker-Pid"])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        new_pid = pid
        while time.monotonic() < deadline:
            try:
                status, headers, _ = s.request("GET", "/health", timeout=2)
                if status == 200:
                    new_pid = int(headers["X-Worker-Pid"])
                    if new_pid != pid:
                        break
            except OSError:
                pass
            time.sleep(0.05)
        assert new_pid != pid
        assert s.request("GET", "/work?payload=again&cost=2")[2]["result"] == expected("again", 2)
    finally:
        s.stop()


def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        env = dict(os.environ, CMS_GUEST_PORT=str(port), CMS_GUEST_BIND="127.0.0.1", CMS_GUEST_WORKERS="1")
        proc = subprocess.run([sys.executable, str(SERVER)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "cannot start" in proc.stderr


@pytest.mark.parametrize("cgroup, unit", [
    ("0::/system.slice/cms-guest.service\n", "cms-guest.service"),                        # cgroup v2
    ("0::/system.slice/cms-guest.service/worker\n", "cms-guest.service"),                 # a sub-cgroup of it
    ("12:pids:/user.slice/user-0.slice/session-3.scope\n1:name=systemd:/user.slice/user-0.slice/session-3.scope\n",
     "session-3.scope"),                                                                  # cgroup v1, in a scope
    ("0::/\n", ""),                                                                       # no unit (a container)
    (None, ""),                                                                           # no cgroup file at all
])
def test_unit_is_read_from_the_cgroup(tmp_path, monkeypatch, cgroup, unit):
    sys.path.insert(0, str(SERVER.parent))
    try:
        import cms_guest_server
    finally:
        sys.path.pop(0)
    path = tmp_path / "cgroup"
    if cgroup is not None:
        path.write_text(cgroup)
    # the server reads /proc/self/cgroup; the module's own name `open` comes before the builtin
    # (the guest's files are the golden image's inputs, so the test bends the read, not the server)
    monkeypatch.setattr(cms_guest_server, "open",
                        lambda name, *a, **kw: open(path if name == "/proc/self/cgroup" else name, *a, **kw),
                        raising=False)
    assert cms_guest_server.systemd_unit() == unit


def test_health_answers_while_every_worker_computes():
    s = Server(workers=1)
    try:
        done: list[int] = []
        t = threading.Thread(target=lambda: done.append(
            s.request("GET", "/work?payload=long&cost=1000000", timeout=120)[0]))
        t.start()
        deadline = time.monotonic() + 30
        while s.request("GET", "/status", timeout=10)[2]["in_flight"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, _, body = s.request("GET", "/health", timeout=10)
        busy = s.request("GET", "/status", timeout=10)[2]["in_flight"]
        t.join(timeout=120)
        assert (status, body) == (200, {"status": "ok"})
        assert busy == 1 or done, "the long request was not running when /health was asked"
        assert done == [200]
    finally:
        s.stop()


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    """The unit as the image installs it; verify needs its ExecStart binary to exist."""
    unit = SERVER.parent / "cms-guest.service"
    (tmp_path / unit.name).write_text(unit.read_text())
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", unit.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    text = unit.read_text()
    for directive in ("Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                      "EnvironmentFile=-/etc/default/cms-guest", "Type=notify", "User=cms-guest"):
        assert directive in text


def test_http10_closes_unless_keep_alive_and_oversized_headers_are_refused(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):  # the server closes: recv returns b"" (bounded by the timeout)
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in data
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        assert b" 431 " in s.recv(4096).split(b"\r\n")[0]
    assert server.request("GET", "/health")[0] == 200
