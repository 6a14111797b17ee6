"""StatusPoller: every ready replica's /status each tick, on keep-alive connections, within a
deadline, against the real guest server (a subprocess on 127.0.0.1) and a stuck one."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from cms.autoscaler.health import HttpHealth, StatusPoller
from tests.unit.test_guest_server import Server


@pytest.fixture(scope="module")
def guest():
    s = Server(workers=2)
    yield s
    s.stop()


class Stuck:
    """A replica whose /status does not answer until released; counts the requests it got."""

    def __init__(self, body: dict | None = None) -> None:
        self.release = threading.Event()
        self.asked = 0
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.asked += 1
                if body is None:
                    outer.release.wait(30)
                data = json.dumps(body or {"in_flight": 0}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_two_polls_give_the_interval_on_one_kept_connection(guest):
    p = StatusPoller(HttpHealth(5.0))
    try:
        where = {"r1": ("127.0.0.1", guest.port)}
        assert p.poll(where, 5.0) == {"r1": None}                 # the first answer is the baseline
        sock = p._conns["r1"][1].sock
        for i in range(3):
            assert guest.request("GET", f"/work?payload=p{i}&cost=1000")[0] == 200
        f = p.poll(where, 5.0)["r1"]
        assert f is not None and f.completed == 3 and f.buckets[-1] == 3 and f.p95_s is not None
        assert p._conns["r1"][1].sock is sock                      # the same keep-alive connection
        assert p.latest["r1"].served >= 3
        assert p.poll({}, 5.0) == {} and "r1" not in p._conns and "r1" not in p.latest   # gone: forgotten
    finally:
        p.close()


def test_a_stuck_replica_never_holds_the_tick(guest):
    stuck = Stuck()
    p = StatusPoller(HttpHealth(30.0))
    try:
        where = {"good": ("127.0.0.1", guest.port), "stuck": ("127.0.0.1", stuck.port)}
        p.poll(where, 3.0)        # the stuck one holds its answer 30 s: each poll ends at its deadline
        got = p.poll(where, 3.0)
        assert got["stuck"] is None and got["good"] is not None
        assert stuck.asked == 1                  # still waiting for its first answer: not asked again
        stuck.release.set()
        assert p.poll(where, 5.0)["good"] is not None
    finally:
        stuck.close()
        p.close()


def test_an_older_guest_gives_its_in_flight_now():
    old = Stuck({"served": 4, "in_flight": 2})
    p = StatusPoller(HttpHealth(5.0))
    try:
        f = p.poll({"old": ("127.0.0.1", old.port)}, 5.0)["old"]
        assert f is not None and f.in_flight == 2.0 and f.p95_s is None
    finally:
        old.close()
        p.close()


def test_nothing_listening_is_no_figure():
    from tests.support import free_port
    p = StatusPoller(HttpHealth(2.0))
    try:
        assert p.poll({"gone": ("127.0.0.1", free_port())}, 5.0) == {"gone": None}
    finally:
        p.close()
