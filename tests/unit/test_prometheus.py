"""Prometheus metrics without a daemon or a VM: cms-api's /metrics in-process, the multiprocess
bookkeeping, the alert rules (promtool), and the autoscaler's families after scripted ticks.

One file for both endpoints and the rules (a little over 400 lines): they share the scrape and
promtool helpers, and the rules are only meaningful against the names both endpoints expose."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import falcon.testing
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cms import errors
from cms.api import prom
from cms.api.app import create_app
from cms.api.service import Deps
from cms.autoscaler import exporter
from cms.autoscaler.reconcile import Autoscaler
from cms.config import HostConfig
from cms.inventory import VmType
from cms.lab.realstack import wait_until
from cms.scheduler import Scheduler
from cms.store import Store
from cms.virt import Fleet
from tests.support import ROOT, make_config, write_node_xml
# how the daemon is driven with fakes on test:/// hosts
from tests.unit.test_autoscaler import G, FakeHealth, FakeMetrics, Recorder, cfg_for, ready_names

RULES = ROOT / "etc" / "prometheus" / "cms-rules.yml"
TOKEN = "t0ken"


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams: dict, family: str, suffix: str = "") -> dict[tuple, float]:
    """{sorted label items: value} of one family's samples named family+suffix."""
    return {tuple(sorted(s.labels.items())): s.value for s in fams[family].samples if s.name == family + suffix}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, timeout=60)


# --- cms-api ---------------------------------------------------------------------------------

@pytest.fixture
def api(tmp_path, run_dir, state_db):
    uri = write_node_xml(tmp_path / "n.xml")
    cfg = make_config(hosts=[{"name": "pm1", "uri": uri}], libvirt={"domain_type": "qemu"},
                      state_db=state_db, api={"token": TOKEN})
    store = Store(cfg.state_db)
    fleet = Fleet(cfg)
    deps = Deps(cfg, store, fleet, Scheduler(cfg, fleet, store), types=[VmType(1, 1, 512, 1)], images=[])
    yield falcon.testing.TestClient(create_app(deps))
    fleet.close()


def test_api_counts_requests_by_route_template_and_status(api):
    for vmid in (17, 18, 19):
        assert api.simulate_get(f"/v1/vms/{vmid}").status_code == 404
    assert api.simulate_post("/v1/vms", json={}).status_code == 401           # refused before routing
    assert api.simulate_post("/v1/vms", json={}, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 400
    assert api.simulate_get("/no/such/path/42").status_code == 404
    assert api.simulate_get("/vm/types").status_code == 200
    r = api.simulate_get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = families(r.text)
    req = samples(fams, "cms_api_requests", "_total")
    key = lambda m, route, st: (("method", m), ("route", route), ("status", st))  # noqa: E731
    assert req == {key("GET", "/v1/vms/{vmid}", "404"): 3.0, key("POST", "/v1/vms", "401"): 1.0,
                   key("POST", "/v1/vms", "400"): 1.0, key("GET", "unmatched", "404"): 1.0,
                   key("GET", "/vm/types", "200"): 1.0}
    counts = samples(fams, "cms_api_request_duration_seconds", "_count")
    assert counts == req
    assert fams["cms_api_request_duration_seconds"].type == "histogram"
    # a second scrape sees the first one, under its own route
    again = samples(families(api.simulate_get("/metrics").text), "cms_api_requests", "_total")
    assert again[key("GET", "/metrics", "200")] == 1.0


@pytest.mark.parametrize("template, label", [
    ("/v1/vms/{vmid:int(min=0, max=9223372036854775807)}/migrate", "/v1/vms/{vmid}/migrate"),
    ("/v1/groups/{name}/scale", "/v1/groups/{name}/scale"),
    ("/vm/create", "/vm/create"),
    (None, "unmatched"),
])
def test_route_label_drops_converter_arguments(template, label):
    assert prom.route_label(template) == label


def test_fresh_multiproc_dir_empties_a_given_directory_of_its_files_only(tmp_path, monkeypatch):
    d = tmp_path / "mp"
    d.mkdir()
    for name in ("counter_12.db", "histogram_7.db", "gauge_livesum_3.db", "notes.txt"):
        (d / name).write_text("x")
    monkeypatch.setenv(prom.ENV, str(d))
    path, made = prom.fresh_multiproc_dir()
    assert (path, made) == (str(d), False)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]


def test_fresh_multiproc_dir_makes_a_private_one(monkeypatch):
    monkeypatch.delenv(prom.ENV, raising=False)
    path, made = prom.fresh_multiproc_dir()
    try:
        assert made and os.environ[prom.ENV] == path and os.listdir(path) == []
    finally:
        prom.remove_dir(path)
        os.environ.pop(prom.ENV, None)
    assert not Path(path).exists()


def test_multiprocess_sum_over_worker_processes_and_dead_workers_marked(tmp_path, monkeypatch):
    """Two 'workers' (processes) count into one directory; the scrape adds them up; child_exit
    (worker_exited) removes a dead worker's live files and keeps its counters."""
    d = tmp_path / "mp"
    d.mkdir()
    env = {**os.environ, prom.ENV: str(d), "PYTHONPATH": str(ROOT)}
    worker = ("from cms.api import prom\n"
              "m = prom.RequestMetrics()\n"
              "for _ in range({n}): m.requests.labels('GET', '/v1/vms', '200').inc()\n"
              "from prometheus_client import Gauge\n"
              "Gauge('cms_test_live', 'x', multiprocess_mode='livesum').set(1)\n")
    pids = []
    for n in (2, 3):
        out = subprocess.run([sys.executable, "-c", worker.format(n=n) + "import os; print(os.getpid())"],
                             env=env, capture_output=True, text=True, timeout=60, check=True)
        pids.append(int(out.stdout))
    scrape = ("from cms.api import prom\n"
              "import falcon.testing, falcon\n"
              "app = falcon.App(); m = prom.RequestMetrics(); app.add_route('/metrics', prom.MetricsResource(m))\n"
              "print(falcon.testing.TestClient(app).simulate_get('/metrics').text)\n")

    def scraped():
        out = subprocess.run([sys.executable, "-c", scrape], env=env, capture_output=True, text=True, timeout=60,
                             check=True)
        return families(out.stdout)

    fams = scraped()
    assert samples(fams, "cms_api_requests", "_total") == {
        (("method", "GET"), ("route", "/v1/vms"), ("status", "200")): 5.0}
    assert samples(fams, "cms_test_live") == {(): 2.0}
    monkeypatch.setenv(prom.ENV, str(d))        # as in the gunicorn master
    prom.worker_exited(None, type("W", (), {"pid": pids[0]})())
    fams = scraped()
    assert samples(fams, "cms_test_live") == {(): 1.0}
    assert samples(fams, "cms_api_requests", "_total")[(("method", "GET"), ("route", "/v1/vms"),
                                                         ("status", "200"))] == 5.0


def test_api_scrape_passes_promtool(api):
    api.simulate_get("/v1/vms/1")
    r = promtool("check", "metrics", stdin=api.simulate_get("/metrics").text)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


# --- alert rules -----------------------------------------------------------------------------

def test_rules_pass_promtool_check():
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 9 rules found" in r.stdout


def test_rules_unit_tests_pass():
    """Each alert fires on its case and not on the near miss beside it (cms-rules.test.yml)."""
    r = subprocess.run(["promtool", "test", "rules", "cms-rules.test.yml"], cwd=RULES.parent,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


# --- cms-autoscaler --------------------------------------------------------------------------

AUTOSCALER_FAMILIES = {
    "cms_replica_cpu_utilization_ratio": "gauge", "cms_replica_in_flight": "gauge",
    "cms_replica_latency_seconds": "histogram", "cms_group_replicas": "gauge",
    "cms_group_desired_replicas": "gauge", "cms_group_min_replicas": "gauge", "cms_group_max_replicas": "gauge",
    "cms_group_cpu_mean_ratio": "gauge", "cms_group_threshold_ratio": "gauge", "cms_group_warm_pool_size": "gauge",
    "cms_group_warm_pool_target_replicas": "gauge", "cms_group_warm_replicas": "gauge",
    "cms_host_up": "gauge", "cms_host_state": "gauge",
    "cms_host_cpu_utilization_ratio": "gauge", "cms_host_cpus": "gauge",
    "cms_host_node_cpu_utilization_ratio": "gauge", "cms_domain_cpu_utilization_ratio": "gauge",
    "cms_domain_vcpu_utilization_ratio": "gauge", "cms_domain_vcpus": "gauge", "cms_domain_memory_bytes": "gauge",
    "cms_domain_state": "gauge",
    "cms_host_vms": "gauge", "cms_host_vcpus": "gauge", "cms_host_memory_bytes": "gauge",
    "cms_host_memory_free_bytes": "gauge", "cms_autoscaler_tick_overruns": "counter",
    "cms_autoscaler_tick_interval_seconds": "gauge", "cms_autoscaler_last_tick_timestamp_seconds": "gauge",
    "cms_feed_sequence": "gauge", "cms_controller_leader": "gauge", "cms_controller_term": "gauge",
    "cms_group_decisions": "counter", "cms_replica_failures": "counter",
    "cms_spawn_failures": "counter", "cms_spawn_stage_duration_seconds": "histogram",
    "cms_decision_to_ready_seconds": "histogram", "cms_libvirt_call_duration_seconds": "histogram",
    "cms_libvirt_errors": "counter", "cms_autoscaler_tick_duration_seconds": "histogram",
}


@pytest.fixture
def scaler(tmp_path, run_dir, state_db):
    cfg = cfg_for(tmp_path, write_node_xml(tmp_path / "node.xml"), state_db=state_db)
    cfg = dataclasses.replace(cfg, autoscaler=dataclasses.replace(cfg.autoscaler, domain_metrics=True))
    fleet = Fleet(cfg)
    fleet.host("n1").conn()  # a test:///file URI starts fresh at each open: keep this one
    s = Autoscaler(cfg, fleet=fleet, metrics=FakeMetrics(), health=FakeHealth(), publisher=Recorder(),
                   store=Store(cfg.state_db))
    ex = exporter.attach(s)
    yield s, ex, fleet
    exporter.detach(s, ex)
    s.close()
    fleet.close()


def scrape(ex: exporter.Exporter) -> tuple[str, dict]:
    text = generate_latest(ex.registry).decode()
    return text, families(text)


def test_autoscaler_families_and_labels_after_scripted_ticks(scaler):
    """min 1 -> overload -> 2 -> a replica fails /health and is replaced, whose first spawn
    fails -> underload -> 1; then every family holds what the daemon did, by its labels."""
    s, ex, fleet = scaler
    ticks = [0]

    def step(pred, what):
        def one():
            s.tick()
            ex.on_tick()
            ticks[0] += 1
            return pred()
        return wait_until(one, 10, interval=s.cfg.autoscaler.tick_s, what=what)

    step(lambda: len(ready_names(s)) == 1, "first replica ready")
    s.metrics.load = 0.95
    step(lambda: len(ready_names(s)) == 2, "scale out to 2")
    s.metrics.load = 0.5
    victim = ready_names(s)[0]
    port = s.tracks[victim].port
    real_spawn, failed_once = s.scheduler.spawn, []

    def spawn_failing_once(*a, **kw):
        if not failed_once:
            failed_once.append(1)
            raise errors.PlacementError("no host has room (scripted)")
        return real_spawn(*a, **kw)

    s.scheduler.spawn = spawn_failing_once
    s.health.down_ports.add(port)
    step(lambda: victim not in s.tracks, "the unhealthy replica removed")
    s.health.down_ports.discard(port)
    s.steps.spawn_backoff.clear()            # retry the failed spawn now, not in 2 s
    step(lambda: len(ready_names(s)) == 2, "replacement ready")
    s.metrics.load = 0.05
    step(lambda: len(s.status()["groups"][G]["replicas"]) == 1 and s.status()["hosts"]["n1"]["vms"] == 1,
         "scale in to 1, seen by a whole tick")
    with pytest.raises(errors.NotFound):
        fleet.host("n1").guest("cms-no-such-domain")    # one libvirt error, by its code

    calls_before = sum(samples(scrape(ex)[1], "cms_libvirt_call_duration_seconds", "_count").values())
    text, fams = scrape(ex)
    calls_after = sum(samples(fams, "cms_libvirt_call_duration_seconds", "_count").values())
    assert calls_after == calls_before, "a scrape made libvirt calls"
    assert {n: f.type for n, f in fams.items() if n.startswith("cms_")} == AUTOSCALER_FAMILIES
    r = promtool("check", "metrics", stdin=text)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr

    st = s.status()
    events = s.store.events(group=G, limit=100000)
    kinds = [e.kind for e in events]
    # per replica: CPU with group, replica, host, state
    [ready] = [r for r in st["groups"][G]["replicas"] if r["state"] == "ready"]
    assert samples(fams, "cms_replica_cpu_utilization_ratio") == {
        (("group", G), ("host", "n1"), ("replica", ready["name"]), ("state", "ready")): 0.05}
    # per domain: the tick's samples, as the store keeps them (what history from Prometheus reads)
    dom = (("domain", ready["name"]), ("group", G), ("host", "n1"))
    assert samples(fams, "cms_domain_cpu_utilization_ratio")[dom] == 0.05
    assert samples(fams, "cms_domain_vcpus")[dom] == 1.0
    assert samples(fams, "cms_domain_state") == {(("domain", ready["name"]), ("group", G), ("state", "ready")): 1.0}
    assert [x.cpu for x in s.store.samples(domain=ready["name"])][-1] == 0.05
    # per group: replicas by state (every state present), desired, bounds, policy
    by_state = samples(fams, "cms_group_replicas")
    assert by_state[(("group", G), ("state", "ready"))] == 1.0
    assert {dict(k)["state"] for k in by_state} == set(exporter.STATES)
    assert samples(fams, "cms_group_desired_replicas") == {(("group", G),): 1.0}
    assert samples(fams, "cms_group_max_replicas") == {(("group", G),): 3.0}
    assert samples(fams, "cms_group_threshold_ratio") == {(("bound", "high"), ("group", G)): 0.75,
                                                          (("bound", "low"), ("group", G)): 0.25}
    assert samples(fams, "cms_group_cpu_mean_ratio")[(("group", G),)] == pytest.approx(st["groups"][G]["policy"]["mean"])
    # decisions, failures, spawn failures: exactly what the journal recorded
    decisions = samples(fams, "cms_group_decisions", "_total")
    for action in ("scale_out", "scale_in"):
        n = sum(1 for e in events if e.kind == "decision" and e.data["action"] == action)
        assert n >= 1 and decisions[(("action", action), ("group", G))] == n
    assert samples(fams, "cms_replica_failures", "_total") == {(("group", G),): kinds.count("failed")} \
        and kinds.count("failed") == 1
    assert samples(fams, "cms_spawn_failures", "_total") == {(("group", G),): 1.0} == {(("group", G),):
                                                                                       kinds.count("spawn_failed")}
    # spawn stages and decision -> ready: one observation per cold spawn
    cold = [e for e in events if e.kind == "added" and "clone_s" in e.data]
    stages = samples(fams, "cms_spawn_stage_duration_seconds", "_count")
    for stage in ("clone", "define", "start", "boot"):
        assert stages[(("group", G), ("stage", stage))] == len(cold) == 3   # the first, the scale-out, the replacement
    to_ready = samples(fams, "cms_decision_to_ready_seconds", "_count")
    assert to_ready == {(("group", G), ("path", "cold")): len(cold)}
    # libvirt: the one bulk stats call per tick, and the error by its libvirt name
    calls = samples(fams, "cms_libvirt_call_duration_seconds", "_count")
    assert calls[(("call", "virConnectGetAllDomainStats"),)] >= ticks[0]
    assert samples(fams, "cms_libvirt_errors", "_total") == {
        (("call", "virDomainLookupByName"), ("code", "VIR_ERR_NO_DOMAIN")): 1.0}
    # hosts, the tick, the feed
    assert samples(fams, "cms_host_up") == {(("host", "n1"),): 1.0}
    assert samples(fams, "cms_host_vms") == {(("host", "n1"),): 1.0}
    assert samples(fams, "cms_host_memory_bytes") == {(("host", "n1"),): 8 * 1024 ** 3}
    assert samples(fams, "cms_autoscaler_tick_duration_seconds", "_count") == {(): ticks[0]}
    assert samples(fams, "cms_autoscaler_tick_overruns", "_total") == {(): st["tick"]["overruns"]}
    assert samples(fams, "cms_feed_sequence") == {(): s.publisher.seq} and s.publisher.seq > 0


def test_collector_maps_a_snapshot_warm_pool_and_target_policy():
    """The collector is a pure function of the snapshot: a target policy's thresholds are where
    it acts, warm members count by state and mode, figures not known yet are left out."""
    st = {"ts": 1000.0, "tick": {"seq": 5, "duration_s": 0.02, "overruns": 2, "tick_s": 1.0}, "feed_seq": 9,
          "groups": {"api": {
              "desired": 2, "min": 1, "max": 4, "serving": 2,
              "replicas": [{"name": "r1", "state": "ready", "host": "h1", "cpu": 0.4},
                           {"name": "r2", "state": "starting", "host": "h2", "cpu": None}],
              "policy": {"name": "target", "mean": None, "target": 0.6, "tolerance": 0.1},
              "warm_pool": {"size": 2, "state": "saved", "target": 2,
                            "members": [{"name": "w1", "state": "parked", "mode": "saved", "host": "h1", "cpu": None},
                                        {"name": "w2", "state": "warming", "mode": "saved", "host": "h2",
                                         "cpu": 0.9}]}}},
          "hosts": {"h1": {"up": True, "cpu": 0.3, "cpus": 8, "vms": 2, "vcpus": 2, "memory_mib": 1024,
                           "free_memory_mib": 512},
                    "h2": {"up": False, "cpu": None, "cpus": None, "vms": 0, "vcpus": 0, "memory_mib": None,
                           "free_memory_mib": None}}}
    ex = exporter.Exporter(lambda: st, ["api"], publisher=type("P", (), {"seq": 11, "subscribers": 3})(),
                           process=False)
    text, fams = scrape(ex)
    assert not [n for n in fams if n.startswith("cms_domain_")]    # per-domain series only when asked for
    assert samples(fams, "cms_replica_cpu_utilization_ratio") == {
        (("group", "api"), ("host", "h1"), ("replica", "r1"), ("state", "ready")): 0.4,
        (("group", "api"), ("host", "h2"), ("replica", "w2"), ("state", "warming")): 0.9}
    bounds = samples(fams, "cms_group_threshold_ratio")
    assert bounds == {(("bound", "high"), ("group", "api")): pytest.approx(0.66),
                      (("bound", "low"), ("group", "api")): pytest.approx(0.54),
                      (("bound", "target"), ("group", "api")): 0.6}
    assert samples(fams, "cms_group_cpu_mean_ratio") == {}
    assert samples(fams, "cms_group_warm_pool_size") == {(("group", "api"), ("mode", "saved")): 2.0}
    assert samples(fams, "cms_group_warm_replicas") == {
        (("group", "api"), ("mode", "saved"), ("state", "parked")): 1.0,
        (("group", "api"), ("mode", "saved"), ("state", "warming")): 1.0}
    replicas = samples(fams, "cms_group_replicas")
    assert [replicas[(("group", "api"), ("state", s))] for s in ("ready", "starting", "parked", "warming", "failed")] \
        == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert samples(fams, "cms_host_up") == {(("host", "h1"),): 1.0, (("host", "h2"),): 0.0}
    assert samples(fams, "cms_host_memory_free_bytes") == {(("host", "h1"),): 512 * 1024 * 1024}
    assert samples(fams, "cms_host_cpu_utilization_ratio") == {(("host", "h1"),): 0.3}
    assert samples(fams, "cms_feed_sequence") == {(): 11.0}             # the publisher's own, when it has one
    assert samples(fams, "cms_feed_subscribers") == {(): 3.0}
    assert samples(fams, "cms_autoscaler_tick_overruns", "_total") == {(): 2.0}
    assert samples(fams, "cms_autoscaler_last_tick_timestamp_seconds") == {(): 1000.0}
    ex.on_tick()
    ex.on_tick()                          # the same tick again: observed once
    assert samples(scrape(ex)[1], "cms_autoscaler_tick_duration_seconds", "_count") == {(): 1.0}
    r = promtool("check", "metrics", stdin=text)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_a_host_that_does_not_answer_is_down(tmp_path, run_dir, state_db):
    cfg = cfg_for(tmp_path, write_node_xml(tmp_path / "node.xml"), state_db=state_db)
    cfg = dataclasses.replace(cfg, hosts=[*cfg.hosts, HostConfig(name="gone", uri="qemu+tcp://127.0.0.1:1/system")])
    fleet = Fleet(cfg)
    fleet.host("n1").conn()
    s = Autoscaler(cfg, fleet=fleet, metrics=FakeMetrics(), health=FakeHealth(), publisher=Recorder(),
                   store=Store(cfg.state_db))
    ex = exporter.attach(s)
    try:
        s.tick()
        fams = scrape(ex)[1]
        assert samples(fams, "cms_host_up") == {(("host", "n1"),): 1.0, (("host", "gone"),): 0.0}
        states = samples(fams, "cms_host_state")
        assert {k for k, v in states.items() if v == 1.0} == {(("host", "gone"), ("state", "suspect")),
                                                             (("host", "n1"), ("state", "up"))}
        assert len(states) == 8                      # every state of each host, 0 or 1
        assert dict(samples(fams, "cms_libvirt_errors", "_total"))[
            (("call", "virConnectOpen"), ("code", "VIR_ERR_SYSTEM_ERROR"))] >= 1
    finally:
        exporter.detach(s, ex)
        s.close()
        fleet.close()


def test_endpoint_serves_and_a_taken_port_does_not_stop_the_daemon(scaler, caplog):
    s, ex, _fleet = scaler
    host, port = ex.serve("127.0.0.1:0")
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
            assert "cms_group_desired_replicas" in r.read().decode()
        caplog.set_level("ERROR", logger="cms.autoscaler.exporter")
        second = exporter.attach(s, f"127.0.0.1:{port}")          # taken: logged, no exception
        assert second.address is None
        assert any("cannot serve Prometheus metrics" in m for m in caplog.messages)
        exporter.detach(s, second)
    finally:
        ex.close()
    with socket.socket() as sock:                  # closed: nothing listens there any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)    # (TIME_WAIT of the scrape is fine)
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize("listen", ["9481", "localhost", "1.2.3.4:70000", "[::1]", "a b:1"])
def test_a_bad_metrics_listen_is_one_line_and_exit_2(tmp_path, listen):
    cfg = tmp_path / "cms.toml"
    cfg.write_text(f'[autoscaler]\nmetrics_listen = "{listen}"\n')
    r = subprocess.run([sys.executable, "-m", "cms.autoscaler.daemon", "--config", str(cfg), "--once"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "autoscaler.metrics_listen" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_warm_pool_members_and_a_warm_scale_out(tmp_path, run_dir, state_db):
    """A paused warm replica shows in the pool's families; the scale-out that takes it is
    timed on the warm path and its unpark as a stage."""
    cfg = cfg_for(tmp_path, write_node_xml(tmp_path / "node.xml"), state_db=state_db, max=2,
                  warm_pool={"size": 1, "state": "paused"})
    fleet = Fleet(cfg)
    fleet.host("n1").conn()
    s = Autoscaler(cfg, fleet=fleet, metrics=FakeMetrics(), health=FakeHealth(), publisher=Recorder(),
                   store=Store(cfg.state_db))
    ex = exporter.attach(s)
    try:
        def run(pred, what):
            return wait_until(lambda: (s.tick(), pred())[1], 10, interval=cfg.autoscaler.tick_s, what=what)

        def fams():
            return scrape(ex)[1]

        run(lambda: samples(fams(), "cms_group_warm_replicas") == {
            (("group", G), ("mode", "paused"), ("state", "parked")): 1.0}, "a parked warm replica")
        f = fams()
        assert samples(f, "cms_group_warm_pool_size") == {(("group", G), ("mode", "paused")): 1.0}
        assert samples(f, "cms_group_warm_pool_target_replicas") == {(("group", G),): 1.0}
        assert samples(f, "cms_group_replicas")[(("group", G), ("state", "parked"))] == 1.0
        s.metrics.load = 0.95
        run(lambda: len(ready_names(s)) == 2, "scale out from the pool")
        f = fams()
        assert samples(f, "cms_decision_to_ready_seconds", "_count")[(("group", G), ("path", "warm"))] == 1.0
        assert samples(f, "cms_spawn_stage_duration_seconds", "_count")[(("group", G), ("stage", "unpark"))] == 1.0
    finally:
        exporter.detach(s, ex)
        s.close()
        fleet.close()


def test_health_says_the_role_and_metrics_say_who_leads(scaler):
    s, ex, _fleet = scaler
    s.tick()
    host, port = ex.serve("127.0.0.1:0")
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=10) as r:
            h = json.loads(r.read())
            assert r.headers["Content-Type"] == "application/json"
        assert h["status"] == "ok" and h["role"] == "leader" and h["term"] == 0 and h["coordination"] is False
        assert h["leader"] == h["name"] == s.election.me.name and h["tick_seq"] >= 1
        fams = scrape(ex)[1]
        assert samples(fams, "cms_controller_leader") == {(("controller", s.election.me.name),): 1.0}
        assert samples(fams, "cms_controller_term") == {(("controller", s.election.me.name),): 0.0}
        s._status["controller"] = {**s._status["controller"], "role": "follower", "leader": "c9"}
        assert samples(scrape(ex)[1], "cms_controller_leader") == {(("controller", s.election.me.name),): 0.0}
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=10) as r:
            assert json.loads(r.read())["role"] == "follower"
    finally:
        ex.close()
