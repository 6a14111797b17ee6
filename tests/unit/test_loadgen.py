"""cms-loadgen against loopback stub servers (tests.doubles) with a real pbkdf2 at tiny cost,
misbehaving stubs, and a real ZeroMQ stub of the autoscaler's feed. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from client.loadgen import parse_args, run
from tests.doubles import StubPublisher, StubWorkServer
from cms.messages import topic

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
COST = 5


def loadgen(argv: list[str], ready_engine=None, driver=None, timeout: float = 30.0) -> dict:
    """Run the client in-process; `driver(engine)` is a coroutine run beside it."""
    a = parse_args(argv + ["--quiet", "--no-keys", "--cost", str(COST)])
    holder = {}

    async def body():
        def got(engine):
            holder["engine"] = engine
            if ready_engine:
                ready_engine(engine)
        main = asyncio.ensure_future(run(a, ready_engine=got))
        side = None
        if driver is not None:
            await until(lambda: "engine" in holder, 5.0, "engine")
            side = asyncio.ensure_future(driver(holder["engine"]))
        summary = await main
        if side is not None:
            await asyncio.wait_for(side, 5.0)
        return summary
    summary = asyncio.run(asyncio.wait_for(body(), timeout))
    summary["_engine"] = holder["engine"]
    return summary


async def until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def accounted(s: dict) -> None:
    assert s["sent"] == s["completed"] + s["errors"]
    assert s["accounted"] and s["outstanding"] == 0


def test_open_loop_rate_is_accurate(tmp_path):
    out = tmp_path / "run.jsonl"
    with StubWorkServer() as srv:
        s = loadgen(["--replica", srv.endpoint, "--low-rate", "200", "--duration", "3", "--out", str(out)])
        served = srv.count()
    accounted(s)
    assert 540 <= s["sent"] <= 660, s["sent"]
    assert s["errors"] == 0 and s["completed"] == s["sent"] == served
    assert 180 <= s["throughput"] <= 220
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    ticks = [r for r in recs if r["type"] == "tick"]
    assert len(ticks) >= 3
    for t in ticks[:2]:
        assert t["mode"] == "low" and t["target_rate"] == 200
        assert 170 <= t["sent"] <= 230
        assert set(t["latency_ms"]) == {"p50", "p95", "p99"} and t["latency_ms"]["p50"] > 0
        assert t["replicas"][srv.endpoint]["completed"] > 0
    assert ticks[-1]["total"] == {"sent": s["sent"], "completed": s["completed"], "errors": 0}
    assert any(r["type"] == "event" and r["event"] == "replica_ready" for r in recs)


def test_latency_counts_from_the_intended_send_time():
    # one connection to a server taking 50 ms each, asked for 100/s: requests queue in the
    # client, and their latency must show that wait (no coordinated omission)
    with StubWorkServer(delay=0.05) as srv:
        s = loadgen(["--replica", srv.endpoint, "--low-rate", "100", "--duration", "1", "--max-conns", "1",
                     "--drain-timeout", "10"])
    accounted(s)
    assert s["errors"] == 0
    assert s["latency_ms"]["p99"] > 400      # vs 50 ms measured from the actual send


def test_round_robin_is_even():
    servers = [StubWorkServer(name=f"s{i}").start() for i in range(3)]
    try:
        s = loadgen(sum((["--replica", x.endpoint] for x in servers), []) +
                    ["--low-rate", "300", "--duration", "2", "--balance", "rr"])
        counts = [x.count() for x in servers]
    finally:
        for x in servers:
            x.stop()
    accounted(s)
    assert s["errors"] == 0 and sum(counts) == s["sent"]
    assert max(counts) - min(counts) <= 1, counts


def test_least_outstanding_prefers_the_fast_replica():
    with StubWorkServer(name="fast") as fast, StubWorkServer(name="slow", delay=0.1) as slow:
        s = loadgen(["--replica", fast.endpoint, "--replica", slow.endpoint, "--low-rate", "200",
                     "--duration", "2", "--balance", "least"])
        nf, ns = fast.count(), slow.count()
    accounted(s)
    assert s["errors"] == 0
    assert nf > 4 * ns, (nf, ns)


def test_failing_replica_is_retried_once_elsewhere():
    with StubWorkServer(name="good") as good, StubWorkServer(behaviour="500", name="bad") as bad:
        s = loadgen(["--replica", good.endpoint, "--replica", bad.endpoint, "--low-rate", "100", "--duration", "2"])
        ng, nb = good.count(), bad.count()
    accounted(s)
    assert s["errors"] == 0 and s["completed"] == s["sent"]
    assert nb == s["retries"] > 0
    assert ng == s["sent"]                       # every request ended on the good one
    assert s["replicas"][bad.endpoint]["errors"] == nb


def test_retry_is_only_once():
    with StubWorkServer(behaviour="500") as a, StubWorkServer(behaviour="close") as b:
        s = loadgen(["--replica", a.endpoint, "--replica", b.endpoint, "--low-rate", "50", "--duration", "1"])
        total = a.count() + b.count()
    accounted(s)
    assert s["completed"] == 0 and s["errors"] == s["sent"] > 0
    assert total == 2 * s["sent"]
    assert set(s["errors_by_kind"]) <= {"http_5xx", "connection"}


def test_wrong_results_are_errors():
    with StubWorkServer(behaviour="wrong") as srv:
        s = loadgen(["--replica", srv.endpoint, "--low-rate", "100", "--duration", "1"])
        n = srv.count()
    accounted(s)
    assert s["completed"] == 0 and s["errors"] == s["sent"] == n > 0
    assert s["errors_by_kind"] == {"wrong_result": n}


def test_fixed_concurrency_mode():
    with StubWorkServer(delay=0.02) as srv:
        s = loadgen(["--replica", srv.endpoint, "--concurrency", "4", "--duration", "2"])
        peak = srv.max_in_flight
    accounted(s)
    assert s["errors"] == 0
    assert peak <= 4
    assert 200 <= s["completed"] <= 420      # about 4 / 20 ms = 200/s for 2 s


def test_schedule_switches_modes(tmp_path):
    out = tmp_path / "run.jsonl"
    with StubWorkServer() as srv:
        s = loadgen(["--replica", srv.endpoint, "--low-rate", "50", "--high-rate", "200",
                     "--schedule", "low:1s,high:1s", "--out", str(out)])
    accounted(s)
    assert 1.9 <= s["duration_s"] <= 2.3
    assert 40 <= s["modes"]["low"]["sent"] <= 60
    assert 170 <= s["modes"]["high"]["sent"] <= 230
    modes = [json.loads(x) for x in out.read_text().splitlines()]
    switches = [r for r in modes if r.get("event") == "mode"]
    assert [(r["mode"], r["source"]) for r in switches] == [("high", "schedule")]


def test_replicas_follow_the_feed():
    """Traffic starts at once on a replica announced ready and never reaches one after its
    draining/failed/removed update was received."""
    a_srv, b_srv, c_srv = (StubWorkServer(name=n).start() for n in "abc")
    pub = StubPublisher()
    marks = {}
    try:
        pub.update("web", "added", "a", port=a_srv.port)
        pub.update("web", "ready", "a", port=a_srv.port)

        def served(srv: StubWorkServer, more: int):
            then = srv.count()
            return lambda: srv.count() >= then + more

        async def driver(engine):
            def sent_to(name: str):
                return lambda: name in engine.replicas and engine.replicas[name].timeline.first_sent_mono is not None

            def landed(name: str, srv: StubWorkServer):
                """Every request the client sent to that replica has reached its server."""
                return lambda: srv.count() == engine.replicas[name].tally.attempts

            await until(lambda: engine.t0 > 0, 10.0, "start")
            assert await asyncio.to_thread(pub.wait_subscribed, topic("web"), 5.0)
            await until(served(a_srv, 20), 2.0, "traffic to a")
            pub.update("web", "added", "b", port=b_srv.port)
            await until(lambda: "b" in engine.replicas, 1.0, "b known")
            assert "b" not in [r.name for r in engine.ready]      # starting: not used
            pub.update("web", "ready", "b", port=b_srv.port)
            await until(sent_to("b"), 1.0, "traffic to b")
            pub.update("web", "added", "c", port=c_srv.port)
            pub.update("web", "ready", "c", port=c_srv.port)
            await until(sent_to("c"), 1.0, "traffic to c")
            pub.update("web", "draining", "a")
            await until(lambda: engine.replicas["a"].timeline.unready_mono is not None, 1.0, "a draining")
            await until(landed("a", a_srv), 1.0, "a's last requests at a")
            marks["a_count_at_drain"] = a_srv.count()
            await until(served(b_srv, 20), 2.0, "traffic without a")
            pub.update("web", "removed", "a")
            pub.update("web", "failed", "c")
            await until(lambda: engine.replicas["c"].timeline.unready_mono is not None, 1.0, "c failed")
            pub.update("web", "removed", "c")
            await until(lambda: engine.replicas["c"].state == engine.replicas["a"].state == "removed", 1.0,
                        "a and c removed")
            await until(landed("c", c_srv), 1.0, "c's last requests at c")
            marks["counts_before_end"] = (a_srv.count(), c_srv.count())

        s = loadgen(["--zmq-publish", pub.publish_endpoint, "--zmq-snapshot", pub.snapshot_endpoint,
                     "--curve-server-key", "", "--low-rate", "200", "--duration", "4.5", "--balance", "least"],
                    driver=driver)
        counts = {n: x.count() for n, x in zip("abc", (a_srv, b_srv, c_srv))}
    finally:
        pub.close()
        for x in (a_srv, b_srv, c_srv):
            x.stop()
    accounted(s)
    assert s["errors"] == 0
    e = s["_engine"]
    for name in "abc":
        rep = e.replicas[name].timeline
        assert rep.first_sent_mono is not None
        assert 0 <= rep.first_sent_mono - rep.ready_mono <= 1.0
        assert s["replicas"][name]["ready_to_first_send_s"] <= 1.0
        assert counts[name] == e.replicas[name].tally.attempts    # the server saw exactly what the client sent
    for name in "ac":
        rep = e.replicas[name].timeline
        assert rep.last_sent_mono <= rep.unready_mono, name   # nothing sent after the update
        assert s["replicas"][name]["state"] == "removed"
    assert s["replicas"]["b"]["state"] == "ready"
    # nothing reached a or c once they left, measured at the servers too
    assert (counts["a"], counts["c"]) == marks["counts_before_end"]
    assert counts["a"] <= marks["a_count_at_drain"]
    assert s["feed"]["snapshots"] == 1 and s["feed"]["updates_applied"] == 8


def test_no_ready_replica_is_exit_1():
    with StubPublisher() as pub:
        r = subprocess.run([PY, "-m", "client.loadgen", "--zmq-publish", pub.publish_endpoint,
                            "--zmq-snapshot", pub.snapshot_endpoint, "--wait-ready", "0.5", "--quiet"],
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 1
    assert "no replica of group 'web' became ready" in r.stderr and "Traceback" not in r.stderr


def test_bad_arguments_exit_2_without_traceback(tmp_path):
    bad_cfg = tmp_path / "cms.toml"
    bad_cfg.write_text("[zmq]\npublish = 5\n")
    cases = [["--schedule", "fast:10s"], ["--schedule", "low:ten"], ["--replica", "nohost"],
             ["--low-rate", "-5"], ["--balance", "random"], ["--concurrency", "x"],
             ["--control", "tcp://0.0.0.0:5560"], ["--duration", "0"], ["--config", str(bad_cfg)],
             ["--config", str(tmp_path / "missing.toml")], ["--out", str(tmp_path / "no" / "x.jsonl")]]
    for argv in cases:
        r = subprocess.run([PY, "-m", "client.loadgen", "--quiet", "--wait-ready", "1"] + argv,
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert r.returncode == 2, (argv, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.strip(), argv


def test_signal_and_control_socket_switch_modes(tmp_path):
    out, summ = tmp_path / "run.jsonl", tmp_path / "summary.json"
    ctl = f"ipc://{tmp_path}/ctl"
    with StubWorkServer() as srv:
        p = subprocess.Popen([PY, "-m", "client.loadgen", "--replica", srv.endpoint, "--cost", str(COST),
                              "--low-rate", "20", "--high-rate", "100", "--duration", "600", "--control", ctl,
                              "--out", str(out), "--summary", str(summ), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        ctx = zmq.Context()
        req = ctx.socket(zmq.REQ)
        req.linger = 0
        req.rcvtimeo = 5000
        req.sndtimeo = 5000
        try:
            req.connect(ctl)

            def ask(cmd):
                req.send(cmd.encode())
                return json.loads(req.recv())
            # the control socket answers once the run has started
            assert ask("high") == {"ok": True, "mode": "high"}
            assert ask("status")["mode"] == "high"
            p.send_signal(signal.SIGUSR1)                   # toggles back to low
            deadline = time.monotonic() + 5
            while ask("status")["mode"] != "low":
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert ask("bogus")["ok"] is False
            assert ask("stop") == {"ok": True, "stopping": True}
            stdout, stderr = p.communicate(timeout=15)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
            req.close(0)
            ctx.term()
    assert p.returncode == 0, stderr
    s = json.loads(summ.read_text())
    assert json.loads(stdout.strip().splitlines()[-1])["sent"] == s["sent"]
    assert s["accounted"]          # and it ended: only the stop asked for ends a 600 s run this soon
    switches = [(r["mode"], r["source"]) for r in map(json.loads, out.read_text().splitlines())
                if r.get("event") == "mode"]
    assert switches == [("high", "control"), ("low", "SIGUSR1")]


def test_expected_result_matches_the_guest_contract():
    import hashlib
    from client.engine import Engine, Options, make_payloads
    expected = Engine(Options(cost=3, payloads=2)).dispatch.expected
    assert expected == [hashlib.pbkdf2_hmac("sha256", p.encode(), b"cms-guest", 3).hex() for p in make_payloads(2)]


def test_terminal_keys(tmp_path):
    import pty
    out = tmp_path / "run.jsonl"
    master, slave = pty.openpty()
    with StubWorkServer() as srv:
        p = subprocess.Popen([PY, "-m", "client.loadgen", "--replica", srv.endpoint, "--cost", str(COST),
                              "--low-rate", "20", "--duration", "600", "--out", str(out)],
                             stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        os.close(slave)
        try:
            deadline = time.monotonic() + 10
            while not (out.exists() and '"start"' in out.read_text()):
                assert time.monotonic() < deadline, "never started"
                time.sleep(0.02)
            os.write(master, b"h")      # the key reader is in place before the run writes its start line
            while '"source":"keyboard"' not in out.read_text():
                assert time.monotonic() < deadline, "h was not taken"
                time.sleep(0.02)
            high_from = srv.count()
            while srv.count() < high_from + 5:          # some high-mode traffic reached the server
                assert time.monotonic() < deadline, "no traffic after h"
                time.sleep(0.02)
            os.write(master, b"q")
            stdout, stderr = p.communicate(timeout=15)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
            os.close(master)
    assert p.returncode == 0, stderr
    s = json.loads(stdout.strip().splitlines()[-1])
    assert s["accounted"] and s["modes"]["high"]["sent"] > 0     # q ended the 600 s run


def test_histogram_percentiles_are_close_to_exact():
    import random
    from client.stats import Histogram, percentiles_sorted
    rnd = random.Random(7)
    values = [rnd.lognormvariate(-6, 1.2) for _ in range(50_000)]
    h = Histogram()
    h.add_many(sorted(values[:25_000]))
    h.add_many(values[25_000:])                    # unsorted input gives the same buckets
    exact = percentiles_sorted(sorted(values), (50, 95, 99))
    for q in (50, 95, 99):
        assert abs(h.percentile_ms(q) - exact[f"p{q}"]) <= 0.02 * exact[f"p{q}"]
    assert h.n == len(values) and abs(h.summary_ms()["max"] - max(values) * 1000) <= 0.001


def test_feed_endpoints_come_from_the_cms_config(tmp_path):
    summ = tmp_path / "s.json"
    with StubPublisher() as pub, StubWorkServer() as srv:
        pub.update("api", "ready", "x", port=srv.port)
        cfg = tmp_path / "cms.toml"
        cfg.write_text(f'[zmq]\npublish = "{pub.publish_endpoint}"\nsnapshot = "{pub.snapshot_endpoint}"\n')
        env = dict(os.environ, CMS_CONFIG=str(cfg))
        r = subprocess.run([PY, "-m", "client.loadgen", "--group", "api", "--cost", str(COST), "--low-rate", "50",
                            "--duration", "1", "--summary", str(summ), "--quiet", "--wait-ready", "10"],
                           capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
        served = srv.count()
    assert r.returncode == 0, r.stderr
    s = json.loads(summ.read_text())
    assert s["accounted"] and s["errors"] == 0 and s["completed"] == served > 0
    assert s["replicas"]["x"]["completed"] == served and s["feed"]["snapshots"] == 1


def test_an_overloaded_replica_gets_no_request_the_client_has_given_up_on():
    # One connection to a replica that needs 0.2 s per request, offered 20 req/s: the
    # queue in the client grows. With a 1 s timeout, requests queued over 0.5 s are shed
    # unsent, so nothing the server computes is abandoned mid-flight.
    with StubWorkServer(delay=0.2) as srv:
        s = loadgen(["--replica", srv.endpoint, "--start-mode", "high", "--high-rate", "20",
                     "--duration", "3", "--timeout", "1", "--max-conns", "1"])
    accounted(s)
    assert s["errors_by_kind"].get("shed", 0) > 10
    assert s["errors_by_kind"].get("timeout", 0) <= 1   # at most the one in flight at the end
    assert s["completed"] >= 10 and srv.served >= s["completed"]
