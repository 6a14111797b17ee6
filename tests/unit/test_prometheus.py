"""Prometheus metrics without a daemon or a VM: cms-api's /metrics in-process, the multiprocess
bookkeeping, the alert rules (promtool), and the autoscaler's families after scripted ticks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import falcon.testing
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cms.api import prom
from cms.api.app import create_app
from cms.api.service import Deps
from cms.inventory import VmType
from cms.scheduler import Scheduler
from cms.store import Store
from cms.virt import Fleet
from tests.support import ROOT, make_config, write_node_xml

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
def api(tmp_path, run_dir):
    uri = write_node_xml(tmp_path / "n.xml")
    cfg = make_config(hosts=[{"name": "pm1", "uri": uri}], libvirt={"domain_type": "qemu"},
                      state_db=str(tmp_path / "state.db"), api={"token": TOKEN})
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
    assert "SUCCESS: 7 rules found" in r.stdout


def test_rules_unit_tests_pass():
    """Each alert fires on its case and not on the near miss beside it (cms-rules.test.yml)."""
    r = subprocess.run(["promtool", "test", "rules", "cms-rules.test.yml"], cwd=RULES.parent,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
