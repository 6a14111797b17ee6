"""Debian's Prometheus scraping a real cms-autoscaler and a real cms-api (gunicorn, 2 workers).

One stack for the module: the system libvirtd (QEMU, TCG here) with a pool of its own, the
golden image, cms-api and cms-autoscaler as processes on one cms.toml, and `prometheus` on
loopback with a configuration this test writes (1 s scrapes, cms's rule file). The group's
policy never acts by itself (its windows outlast the test): a scale request through the API
takes it from 1 to 2 replicas, and Prometheus must see the count change.

The same stack serves the history from Prometheus ([history] source = "prometheus",
cms.promhistory): an API VM (a blank disk: QEMU runs, no guest boots) is charted from the
store by the running API and from Prometheus by the same routes built in this process, and
the two must agree within one step; and every query of the Grafana dashboard
(etc/grafana/cms-dashboard.json) must return data from this Prometheus.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from cms import config as cms_config
from cms.lab.realstack import GOLDEN, drop_pool, stop_process, wait_until
from cms.virt import Fleet
from tests.integration.test_api_real import served
from tests.support import ROOT, blank_golden, free_port

pytestmark = pytest.mark.real

GROUP = "promt"
TOKEN = "prom-token"
BOOT = 240.0
RULES = ROOT / "etc" / "prometheus" / "cms-rules.yml"


@dataclass
class Stack:
    api: str                 # cms-api's URL
    scaler: str              # cms-autoscaler's metrics URL
    prom: str                # Prometheus' URL
    tmp: Path
    pool: str


def http(url: str, method: str = "GET", body: dict | None = None, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def query(stack: Stack, promql: str) -> list[dict]:
    status, body = http(f"{stack.prom}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    data = json.loads(body)
    assert status == 200 and data["status"] == "success", data
    return data["data"]["result"]


def value(stack: Stack, promql: str) -> float | None:
    """The single value of an instant query; None while it has no result."""
    result = query(stack, promql)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def logs(tmp: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp.glob("*.log")))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    assert GOLDEN.exists(), f"{GOLDEN} is missing: run scripts/build-image.sh"
    tmp = tmp_path_factory.mktemp("prom")
    pool = f"cmstest-{uuid.uuid4().hex[:8]}"
    api_port, metrics_port, prom_port, pub, snap = (free_port() for _ in range(5))
    config = f"""state_db = "{tmp}/state.db"
[[hosts]]
name = "local"
uri = "qemu:///system"
[libvirt]
domain_type = "auto"
pool = "{pool}"
pool_path = "/var/lib/cms/test/{pool}"
[image]
golden = "{GOLDEN}"
pool = "{pool}-images"
pool_path = "/var/lib/cms/test/{pool}-images"
[api]
bind = "127.0.0.1:{api_port}"
workers = 2
token = "{TOKEN}"
[zmq]
publish = "tcp://127.0.0.1:{pub}"
snapshot = "tcp://127.0.0.1:{snap}"
[autoscaler]
tick_s = 1.0
health_timeout_s = {BOOT}
metrics_listen = "127.0.0.1:{metrics_port}"
domain_metrics = true
[groups.{GROUP}]
min = 1
max = 2
memory_mib = 384
cooldown_s = 0.0
[groups.{GROUP}.threshold]
high = 0.99
low = 0.01
window_s = 3600.0
window_in_s = 3600.0
"""
    (tmp / "prometheus.yml").write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: cms-api
    static_configs: [{{targets: ["127.0.0.1:{api_port}"]}}]
  - job_name: cms-autoscaler
    static_configs: [{{targets: ["127.0.0.1:{metrics_port}"]}}]
""")
    (tmp / "image_file").write_text(f"{blank_golden()}\n")
    (tmp / "types_file").write_text(json.dumps({"types": [{"tid": 1, "cpu": 1, "ram": 256, "disk": 1}]}))
    env = {**os.environ, "CMS_RUN_DIR": str(tmp / "run")}
    env.pop("CMS_CONFIG", None)
    procs: list[tuple[subprocess.Popen, object]] = []
    try:
        with served(tmp, config) as api_url:
            for name, argv in (
                    ("autoscaler", [sys.executable, "-m", "cms.autoscaler.daemon", "--config", str(tmp / "cms.toml")]),
                    ("prometheus", ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"])):
                log = open(tmp / f"{name}.log", "w")
                procs.append((subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
            s = Stack(api_url, f"http://127.0.0.1:{metrics_port}", f"http://127.0.0.1:{prom_port}", tmp, pool)

            def both_up():
                for p, _ in procs:
                    assert p.poll() is None, logs(tmp)
                try:
                    return http(s.prom + "/-/ready")[0] == 200 and \
                        value(s, 'sum(up{job=~"cms-api|cms-autoscaler"})') == 2
                except OSError:
                    return False
            wait_until(both_up, 60, 0.5, "Prometheus up and scraping both targets")
            yield s
    finally:
        for p, log in procs:
            stop_process(p)
            log.close()
        fleet = Fleet(cms_config.load(tmp / "cms.toml"))
        try:
            for d in fleet.owned(GROUP):
                fleet.remove(d.host, d.name)
            for d in fleet.owned(None):          # the API VM, found by its disk in this test's pool
                if d.meta.role == "vm" and pool in fleet.host("local").conn().lookupByName(d.name).XMLDesc(0):
                    fleet.remove(d.host, d.name)
            drop_pool(fleet.host("local"), pool)
            drop_pool(fleet.host("local"), f"{pool}-images")
        finally:
            fleet.close()


def test_prometheus_sees_a_forced_scale_out(stack):
    ready = f'cms_group_replicas{{group="{GROUP}",state="ready"}}'
    wait_until(lambda: value(stack, ready) == 1, BOOT, 1.0, "Prometheus to see the first replica ready")
    status, body = http(f"{stack.api}/v1/groups/{GROUP}/scale", "POST", {"replicas": 2}, TOKEN)
    assert status == 202, body
    wait_until(lambda: value(stack, ready) == 2, BOOT, 1.0, "Prometheus to see 2 ready replicas")
    assert value(stack, f'cms_group_desired_replicas{{group="{GROUP}"}}') == 2
    # each ready replica has its CPU series, labelled with the group, replica, host and state
    wait_until(lambda: len(query(stack, f'cms_replica_cpu_utilization_ratio{{group="{GROUP}",state="ready"}}'))
               == 2, 30, 1.0, "CPU figures of both replicas")
    cpu = query(stack, f'cms_replica_cpu_utilization_ratio{{group="{GROUP}",state="ready"}}')
    assert {r["metric"]["host"] for r in cpu} == {"local"} and len({r["metric"]["replica"] for r in cpu}) == 2
    # the spawns' stages and decision -> ready, from the real boots
    assert value(stack, f'sum(cms_spawn_stage_duration_seconds_count{{group="{GROUP}",stage="boot"}})') == 2
    assert value(stack, f'cms_decision_to_ready_seconds_count{{group="{GROUP}",path="cold"}}') == 2
    assert value(stack, 'cms_host_up{host="local"}') == 1
    assert value(stack, 'sum(cms_libvirt_call_duration_seconds_count{call="virConnectGetAllDomainStats"})') > 0


def test_a_4xx_is_counted_under_its_route_template(stack):
    for vmid in (987654, 987655):
        assert http(f"{stack.api}/v1/vms/{vmid}")[0] == 404
    assert http(f"{stack.api}/v1/vms", "POST", {})[0] == 401                 # no token: refused before routing
    by_template = 'sum(cms_api_requests_total{route="/v1/vms/{vmid}",method="GET",status="404"})'
    wait_until(lambda: (value(stack, by_template) or 0) >= 2, 30, 1.0, "the 404s in Prometheus")
    wait_until(lambda: value(stack, 'sum(cms_api_requests_total{route="/v1/vms",status="401"})') == 1, 30, 1.0,
               "the 401 in Prometheus")
    assert query(stack, 'cms_api_requests_total{route=~".*98765.*"}') == [], "a raw path became a label"
    assert value(stack, 'sum(cms_api_request_duration_seconds_count{route="/v1/vms/{vmid}"})') >= 2


def test_both_scrapes_and_the_rules_pass_promtool(stack):
    for url in (stack.api + "/metrics", stack.scaler + "/metrics"):
        status, body = http(url)
        assert status == 200
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), (url, r.stdout + r.stderr)
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # Prometheus loaded every rule and evaluates each without error against the real series
    def rules():
        return [r for g in json.loads(http(stack.prom + "/api/v1/rules")[1])["data"]["groups"] for r in g["rules"]]
    wait_until(lambda: all(r["health"] == "ok" for r in rules()), 30, 1.0, "every rule evaluated")
    assert len(rules()) == RULES.read_text().count("- alert:") >= 9, rules()     # every rule of the file


# -- history from Prometheus, and the Grafana dashboard -----------------------------------------

DASHBOARD = ROOT / "etc" / "grafana" / "cms-dashboard.json"


@pytest.fixture(scope="module")
def api_vm(stack):
    """An API VM on a blank disk, and the same API built in this process on the Prometheus source."""
    import dataclasses

    import falcon.testing

    from cms.api.app import create_app
    from cms.api.service import build_deps
    status, body = http(f"{stack.api}/v1/vms", "POST", {"name": "promvm", "instance_type": 1}, TOKEN)
    assert status in (200, 201), body
    vm = json.loads(body)
    cfg = cms_config.load(stack.tmp / "cms.toml")
    cfg = dataclasses.replace(cfg, history=dataclasses.replace(cfg.history, source="prometheus",
                                                               prometheus_url=stack.prom))
    deps = build_deps(cfg)
    try:
        yield vm, falcon.testing.TestClient(create_app(deps))
    finally:
        deps.fleet.close()
        http(f"{stack.api}/vm/destroy?vmid={vm['vmid']}")


def _metrics(get, **params) -> dict:
    r = get(params)
    assert r[0] == 200, r
    return r[1]


def test_vm_history_from_prometheus_is_the_stores_within_one_step(stack, api_vm):
    vm, prom_api = api_vm
    seen = f'count_over_time(cms_domain_cpu_utilization_ratio{{domain="{vm["domain"]}"}}[5m])'
    wait_until(lambda: (value(stack, seen) or 0) >= 40, 120, 1.0, "40 scrapes of the VM's CPU")
    first = min(float(t) for r in query(stack, f'cms_domain_vcpus{{domain="{vm["domain"]}"}}[5m]')
                for t, _v in r["values"])
    since, until = float(int(first)), float(int(first)) + 36.0

    def from_store(params):
        status, body = http(f"{stack.api}/v1/vms/{vm['vmid']}/metrics?" + urllib.parse.urlencode(params))
        return status, json.loads(body)

    def from_prom(params):
        r = prom_api.simulate_get(f"/v1/vms/{vm['vmid']}/metrics", params=params)
        return r.status_code, r.json

    # one point per tick: each Prometheus point is a stored sample, in its bucket or the next
    one = {"since": since, "until": until, "step": 1}
    store, prom = _metrics(from_store, **one), _metrics(from_prom, **one)
    assert store.keys() == prom.keys() and store["ts"] == prom["ts"] and store["series"].keys() == prom["series"].keys()
    s_cpu, p_cpu = store["series"]["cpu"], prom["series"]["cpu"]
    matched = [i for i, v in enumerate(p_cpu) if v is not None and v in (s_cpu[i], s_cpu[i - 1] if i else None)]
    assert store["points"] >= 30 and len(matched) >= 0.8 * store["points"], (s_cpu, p_cpu)
    # 6 s buckets: the same buckets have data, and each mean lies within the stored one-second
    # values of its bucket and the second before it (a scrape comes after its tick)
    six = {"since": since, "until": until, "step": 6}
    store6, prom6 = _metrics(from_store, **six), _metrics(from_prom, **six)
    assert [v is None for v in store6["series"]["cpu"]] == [v is None for v in prom6["series"]["cpu"]]
    assert len(prom6["series"]["vcpu"]) == len(store6["series"]["vcpu"]) == 1
    for name in ("cpu", "memory_mib", "vcpus"):
        per_second = store["series"][name]
        for i, v in enumerate(prom6["series"][name]):
            near = [x for x in per_second[max(0, 6 * i - 1):6 * i + 6] if x is not None]
            assert min(near) - 1e-3 <= v <= max(near) + 1e-3, (name, i, v, near)


def test_group_and_host_history_from_prometheus_have_the_stores_shape(stack, api_vm):
    _vm, prom_api = api_vm
    import time
    now = float(int(time.time()))
    params = {"since": now - 60, "until": now, "step": 5}
    for path in (f"/v1/groups/{GROUP}/metrics", "/v1/hosts/1/metrics"):
        status, body = http(f"{stack.api}{path}?" + urllib.parse.urlencode(params))
        store = json.loads(body)
        r = prom_api.simulate_get(path, params=params)
        assert status == r.status_code == 200, (body, r.text)
        prom = r.json
        assert store.keys() == prom.keys() and store["series"].keys() == prom["series"].keys(), path
        assert store["ts"] == prom["ts"] and prom["points"] >= 10, (path, prom)
    assert set(prom["domains"]) == set(store["domains"])            # every domain's share of the host
    assert prom["source"] == "host" and prom["series"]["vms"][-2] == store["series"]["vms"][-2]


def test_every_query_of_the_grafana_dashboard_returns_data(stack):
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "group", "host"}
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", ())]
    titles = {p["title"] for p in dash["panels"]}
    assert {"Hosts", "Groups", "Replicas", "Decisions", "Spawn stages"} <= titles and len(exprs) >= 15
    for e in exprs:
        q = (e.replace("$group", GROUP).replace("$host", "local").replace("$__range", "1h")
             .replace("$__rate_interval", "1m"))
        assert "$" not in q, q
        result = query(stack, q)
        finite = [float(r["value"][1]) for r in result if r["value"][1] not in ("NaN", "+Inf", "-Inf")]
        assert finite, f"no data for {e}"
