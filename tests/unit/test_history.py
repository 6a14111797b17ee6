"""The history API (/v1/{vms,hosts,groups}/.../metrics), the store's pruning and the console's
file serving, in-process over libvirt test:/// hosts with samples written straight into the store."""

from __future__ import annotations

import dataclasses
import math

import pytest

from cms.api import console, history
from cms.store import HostSample, Sample, Store
from tests.unit.test_api import AUTH, build

T0 = 1_700_000_000.0


@pytest.fixture
def api(tmp_path, run_dir, state_db):
    client, deps = build(tmp_path, state_db)
    yield client, deps
    deps.fleet.close()


def _vm(c) -> dict:
    r = c.simulate_post("/v1/vms", json={"name": "h1", "instance_type": 2}, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json


def _metrics(c, path: str, **params) -> tuple[int, dict]:
    r = c.simulate_get(path, params={k: str(v) for k, v in params.items()})
    return r.status_code, r.json


def test_vm_metrics_downsample_each_bucket_to_its_mean_and_peak(api):
    c, deps = api
    vm = _vm(c)
    # 60 one-second samples: CPU 0.0, 0.1, ... 0.5 repeating every 6 s; two vCPUs at half and all of it
    rows = [Sample(T0 + i, "pm1", vm["domain"], "", (i % 6) / 10, 2, 1024 * (500 + i), "running",
                   ((i % 6) / 20, (i % 6) / 10)) for i in range(60)]
    deps.store.add_samples(rows)
    status, m = _metrics(c, f"/v1/vms/{vm['vmid']}/metrics", since=T0, until=T0 + 60, step=6)
    assert status == 200
    assert m["ts"] == [T0 + 6 * i for i in range(10)] and m["points"] == 10
    assert m["series"]["cpu"] == [0.25] * 10                     # mean of 0.0 .. 0.5
    assert m["series"]["cpu_max"] == [0.5] * 10
    assert m["series"]["vcpu"] == [[0.125] * 10, [0.25] * 10]   # one series per vCPU
    assert m["series"]["vcpus"] == [2] * 10
    assert m["series"]["memory_mib"][0] == round((500 + 2.5), 1)  # mean of 500..505 KiB-thousands, in MiB
    # step = the tick: every sample is its own point
    status, fine = _metrics(c, f"/v1/vms/{vm['vmid']}/metrics", since=T0, until=T0 + 60, step=1)
    assert status == 200 and fine["points"] == 60 and fine["series"]["cpu"][:7] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0]


def test_ranges_lay_out_every_bucket_with_nulls_where_no_sample_fell(api):
    c, deps = api
    vm = _vm(c)
    deps.store.add_samples([Sample(T0 + 10, "pm1", vm["domain"], "", 0.5, 2, 1024, "running")])
    status, m = _metrics(c, f"/v1/vms/{vm['vmid']}/metrics", since=T0, until=T0 + 30, step=10)
    assert status == 200 and m["series"]["cpu"] == [None, 0.5, None] and m["points"] == 1
    # until is exclusive, since inclusive
    assert _metrics(c, f"/v1/vms/{vm['vmid']}/metrics", since=T0, until=T0 + 10, step=10)[1]["points"] == 0
    assert _metrics(c, f"/v1/vms/{vm['vmid']}/metrics", since=T0 + 10, until=T0 + 11, step=1)[1]["points"] == 1
    # a range that does not divide by the step ends with a partial bucket
    status, m = _metrics(c, f"/v1/vms/{vm['vmid']}/metrics", since=T0, until=T0 + 25, step=10)
    assert status == 200 and len(m["ts"]) == 3
    # another VM's samples never show
    deps.store.add_samples([Sample(T0 + 5, "pm1", "cms-vm-999", "", 0.9, 1, 1024, "running")])
    assert _metrics(c, f"/v1/vms/{vm['vmid']}/metrics", since=T0, until=T0 + 10, step=10)[1]["series"]["cpu"] == [None]


def test_empty_ranges_are_answers_not_errors(api):
    c, deps = api
    vm = _vm(c)
    status, m = _metrics(c, f"/v1/vms/{vm['vmid']}/metrics", since=T0, until=T0 + 100, step=10)
    assert status == 200 and m["points"] == 0 and m["series"]["cpu"] == [None] * 10 and m["series"]["vcpu"] == []
    status, h = _metrics(c, "/v1/hosts/1/metrics", since=T0, until=T0 + 100, step=50)
    assert status == 200 and h["points"] == 0 and h["domains"] == {} and h["series"]["cpu"] == [None, None]
    status, g = _metrics(c, "/v1/groups/web/metrics", since=T0, until=T0 + 100, step=50)
    assert status == 200 and g["points"] == 0 and g["markers"] == [] and g["series"]["states"] == {}


def test_defaults_are_the_last_hour_at_about_300_points(api):
    c, _ = api
    vm = _vm(c)
    status, m = _metrics(c, f"/v1/vms/{vm['vmid']}/metrics")
    assert status == 200 and m["until"] - m["since"] == history.DEFAULT_RANGE_S and len(m["ts"]) == 300


@pytest.mark.parametrize("params, needle", [
    ({"since": T0 + 10, "until": T0}, "must be before until"),
    ({"since": T0, "until": T0}, "must be before until"),
    ({"since": "yesterday"}, "since must be a number"),
    ({"until": "nan"}, "until must be a number from 0"),
    ({"since": "inf"}, "since must be a number from 0"),
    ({"since": -5}, "since must be a number from 0"),
    ({"since": T0, "until": T0 + 10, "step": 0}, "step must be above 0"),
    ({"since": T0, "until": T0 + 10, "step": -1}, "step must be a number from 0"),
    ({"since": T0, "until": T0 + 86400, "step": 1}, "more than 2000 points"),
    ({"since": 0, "until": 1e10, "step": 5e-324}, "more than 2000 points"),
    ({"until": 1e300}, "until must be a number from 0"),
])
def test_bad_ranges_are_400s_that_say_why(api, params, needle):
    c, _ = api
    vm = _vm(c)
    for path in (f"/v1/vms/{vm['vmid']}/metrics", "/v1/hosts/1/metrics", "/v1/groups/web/metrics"):
        status, body = _metrics(c, path, **params)
        assert status == 400 and set(body) == {"title", "description"} and needle in body["description"], (path, body)


def test_unknown_subjects_are_404s(api):
    c, _ = api
    for path in ("/v1/vms/77/metrics", "/v1/hosts/9/metrics", "/v1/groups/nope/metrics"):
        status, body = _metrics(c, path, since=T0, until=T0 + 10)
        assert status == 404 and "description" in body, path


def test_host_metrics_from_host_rows_and_each_domains_share(api):
    c, deps = api
    deps.store.add_host_samples([HostSample(T0 + i, "pm1", 0.25 + 0.01 * i, 4, 2, 3, 3000 - i, 0.3) for i in range(10)])
    deps.store.add_samples([Sample(T0 + i, "pm1", "cms-vm-1", "", 0.5, 2, 1024, "running") for i in range(10)]
                           + [Sample(T0 + i, "pm1", "cms-web-1", "web", 1.0, 1, 1024, "ready") for i in range(10)])
    status, m = _metrics(c, "/v1/hosts/1/metrics", since=T0, until=T0 + 10, step=5)
    assert status == 200 and m["source"] == "host" and m["cpus"] == 4 and m["host"] == "pm1"
    assert m["series"]["cpu"] == [0.27, 0.32] and m["series"]["cpu_max"] == [0.29, 0.34]
    assert m["series"]["free_memory_mib"] == [2998, 2993] and m["series"]["vms"] == [2, 2]
    # which VM eats the host: each domain's CPUs over the host's 4
    assert m["domains"] == {"cms-vm-1": [0.25, 0.25], "cms-web-1": [0.25, 0.25]}


def test_host_metrics_fall_back_to_the_domain_samples_without_host_rows(api):
    c, deps = api
    # pm2 has 2 CPUs (the test node); two domains, one busy on 2 vCPUs, one idle
    deps.store.add_samples([Sample(T0 + i, "pm2", "cms-vm-1", "", 0.5, 2, 1024, "running") for i in range(4)]
                           + [Sample(T0 + i, "pm2", "cms-web-1", "web", 0.0, 1, 1024, "ready") for i in range(2)])
    status, m = _metrics(c, "/v1/hosts/2/metrics", since=T0, until=T0 + 4, step=2)
    assert status == 200 and m["source"] == "domains" and m["cpus"] == 2
    assert m["series"]["cpu"] == [0.5, 0.5]                    # 1 CPU of 2 busy
    assert m["series"]["vms"] == [2, 1] and m["series"]["vcpus"] == [3, 2]
    assert m["series"]["free_memory_mib"] == [None, None]       # only the host rows know it


def test_group_metrics_states_thresholds_and_decisions(api):
    c, deps = api
    rows = []
    for i in range(10):
        rows.append(Sample(T0 + i, "pm1", "cms-web-a", "web", 0.8, 1, 1024, "ready"))
        if i >= 5:   # a second replica, starting for 3 ticks, then ready
            rows.append(Sample(T0 + i, "pm2", "cms-web-b", "web", 0.2, 1, 1024, "starting" if i < 8 else "ready"))
    deps.store.add_samples(rows)
    deps.store.add_event("decision", "scale_out to 2: cpu mean over 5s 0.8 > high 0.75", group="web", ts=T0 + 4.5)
    deps.store.add_event("ready", "not a marker", group="web", subject="cms-web-b", ts=T0 + 8)
    deps.store.add_event("decision", "outside the range", group="web", ts=T0 + 50)
    status, m = _metrics(c, "/v1/groups/web/metrics", since=T0, until=T0 + 10, step=5)
    assert status == 200 and m["policy"] == "threshold"
    assert m["thresholds"] == {"high": 0.75, "low": 0.25}
    assert m["series"]["replicas"] == [1, 2] and m["series"]["cpu"] == [0.8, 0.5]
    assert m["series"]["states"] == {"ready": [1, 1.4], "starting": [None, 0.6]}
    assert [(k["kind"], k["ts"]) for k in m["markers"]] == [("decision", T0 + 4.5)]


def test_group_metrics_load_in_flight_per_replica_and_p95_against_the_concurrency_target(api):
    c, deps = api
    rows = []
    for i in range(10):   # two ready replicas polled: 1 and 3 in flight, p95 0.2 and 0.6; a third not polled
        rows.append(Sample(T0 + i, "pm1", "cms-web-a", "web", 0.5, 1, 1024, "ready", (), 1.0, 2.0, 0.2))
        rows.append(Sample(T0 + i, "pm1", "cms-web-b", "web", 0.9, 1, 1024, "ready", (), 3.0, 2.0, 0.6 if i < 5 else None))
        rows.append(Sample(T0 + i, "pm1", "cms-web-c", "web", 0.1, 1, 1024, "starting"))
    deps.store.add_samples(rows)
    status, m = _metrics(c, "/v1/groups/web/metrics", since=T0, until=T0 + 10, step=5)
    assert status == 200
    assert m["series"]["in_flight"] == [2.0, 2.0]           # per polled replica, the starting one not counted
    assert m["series"]["p95_s"] == [0.6, 0.2]               # the slowest polled replica's (b's had no answers)
    assert m["load"] == {} and m["thresholds"] == {"high": 0.75, "low": 0.25}
    web = deps.cfg.groups["web"]
    deps.cfg.groups["web"] = dataclasses.replace(      # the API reads the group's settings at each request
        web, policy="concurrency", concurrency=dataclasses.replace(web.concurrency, utilization=0.5, latency_p95_s=1.5))
    status, m = _metrics(c, "/v1/groups/web/metrics", since=T0, until=T0 + 10, step=5)
    assert status == 200 and m["thresholds"] == {}
    assert m["load"] == {"in_flight": 0.5 * web.vcpus, "latency_p95_s": 1.5}
    policy = c.simulate_get("/v1/groups/web").json["policy"]        # the group's own keys, not target's
    assert policy["name"] == "concurrency" and policy["utilization"] == 0.5 and "tolerance" not in policy


def test_prune_history_keeps_the_store_bounded(state_db):
    s = Store(state_db)
    s.add_samples([Sample(T0 + i, "h", "d", "", 0.1, 1, 1, "running", (0.1,)) for i in range(100)])
    s.add_host_samples([HostSample(T0 + i, "h", 0.1, 2, 1, 1, 100) for i in range(100)])
    for i in range(10):
        s.add_event("decision", "x", ts=T0 + 10 * i)
    assert s.prune_history(T0 + 60, events_before=T0 + 30) == {"samples": 60, "host_samples": 60, "events": 3}
    assert len(s.samples()) == 40 and len(s.host_samples()) == 40 and len(s.events()) == 7
    assert s.samples()[0].vcpu == (0.1,)
    assert s.prune_history(T0 + 60) == {"samples": 0, "host_samples": 0}


def test_parse_range_is_pure_and_bounded():
    q = {"since": "100", "until": "200", "step": "10"}
    assert history.parse_range(q.get, 999.0) == (100.0, 200.0, 10.0, 10)
    assert history.parse_range({}.get, 7200.0) == (3600.0, 7200.0, 12.0, 300)
    since, until, step, n = history.parse_range({"since": "0", "until": "1"}.get, 5.0)
    assert (step, n) == (1.0, 1)
    assert math.isclose(history.parse_range({"since": "0", "until": "20000"}.get, 0)[2], 20000 / 300)


# -- the console's files -----------------------------------------------------------------------

def test_console_files_are_served_with_cache_headers(api):
    c, _ = api
    page = c.simulate_get("/")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-cache" and page.headers["etag"]
    _, version = console.load()
    assert f"/static/{version}/app.js" in page.text and "{{version}}" not in page.text
    again = c.simulate_get("/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304 and not again.content
    js = c.simulate_get(f"/static/{version}/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "immutable" in js.headers["cache-control"] and js.headers["etag"]
    mod = c.simulate_get(f"/static/{version}/pages/overview.js")
    assert mod.status_code == 200 and "export function overviewPage" in mod.text
    uplot = c.simulate_get(f"/static/{version}/vendor/uPlot.esm.js")
    assert uplot.status_code == 200 and "export { uPlot as default }" in uplot.text
    stale = c.simulate_get("/static/0123456789ab/app.css")   # a page loaded before an upgrade
    assert stale.status_code == 200 and stale.headers["cache-control"] == "no-cache"
    for bad in ("nope.js", "../app.py", "package.json", "node_modules/uplot/package.json", "index.html"):
        r = c.simulate_get(f"/static/{version}/{bad}")
        assert r.status_code == 404, bad       # the body is cms.api.failures' answer outside /v1


def test_every_module_the_page_imports_is_served(api):
    """Each relative import in the console's modules names a file the server has."""
    import re
    assets, _ = console.load()
    for path, a in assets.items():
        if not path.endswith(".js") or path.startswith("vendor/"):
            continue
        base = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        for spec in re.findall(r'(?:from|import)\s*\(?\s*"(\.[^"]+)"', a.body.decode()):
            parts = (base + spec).split("/")
            out: list[str] = []
            for p in parts:
                if p == "..":
                    out.pop()
                elif p not in (".", ""):
                    out.append(p)
            assert "/".join(out) in assets, f"{path} imports {spec}"


# -- what the autoscaler records ------------------------------------------------------------------

def test_the_autoscaler_samples_the_api_vms_and_prunes_past_retention(tmp_path, run_dir, state_db):
    """The daemon samples every VM cms owns, not only its replicas (so a VM made through the
    API has charts), keeps them out of the policy, and deletes history past retention."""
    import dataclasses
    import time

    from cms.autoscaler.reconcile import Autoscaler
    from cms.config import HistoryConfig
    from cms.scheduler import Scheduler
    from cms.virt import Fleet, OwnerMeta
    from tests.support import write_node_xml
    from tests.unit.test_autoscaler import G, FakeHealth, FakeMetrics, Recorder, cfg_for

    cfg = dataclasses.replace(cfg_for(tmp_path, write_node_xml(tmp_path / "node.xml"), state_db=state_db),
                              history=HistoryConfig(retention_s=60, events_retention_s=120, prune_interval_s=1))
    fleet = Fleet(cfg)
    fleet.host("n1").conn()   # a test:///file URI starts fresh at each open: keep this one
    store = Store(cfg.state_db)
    now = time.time()
    store.add_samples([Sample(now - 1000, "n1", "cms-vm-old", "", 0.1, 1, 1024, "running")])
    store.add_host_samples([HostSample(now - 1000, "n1", 0.1, 4, 1, 1, 100)])
    store.add_event("decision", "long ago", group=G, ts=now - 1000)
    store.add_event("decision", "recent enough", group=G, ts=now - 90)
    Scheduler(cfg, fleet, store).spawn("cms-vm-7", vcpus=1, memory_mib=256, meta=OwnerMeta(role="vm", vmid=7))
    metrics = FakeMetrics()
    metrics.per_name["cms-vm-7"] = 0.42
    s = Autoscaler(cfg, fleet=fleet, metrics=metrics, health=FakeHealth(), publisher=Recorder(), store=store)
    try:
        from cms.lab.realstack import wait_until

        def tick():
            s.tick()
            return store.samples(group=G)
        wait_until(tick, 10, interval=cfg.autoscaler.tick_s, what="the group's first replica sampled")
        vm = store.samples(domain="cms-vm-7")
        assert len(vm) >= 1 and {x.cpu for x in vm} == {0.42} and {x.group for x in vm} == {""}
        assert {x.state for x in vm} == {"running"}
        assert "cms-vm-7" not in s.history.names()            # the policy never sees it
        assert store.samples(domain="cms-vm-old") == [] and store.host_samples(until=now - 500) == []
        assert [e.message for e in store.events(kinds=["decision"])] == ["recent enough"]
    finally:
        s.close()
        fleet.close()


def test_a_vm_can_be_created_on_a_chosen_host(api):
    c, deps = api
    r = c.simulate_post("/v1/vms", json={"name": "on2", "instance_type": 1, "pmid": 2}, headers=AUTH)
    assert r.status_code == 201 and r.json["pmid"] == 2 and r.json["host"] == "pm2", r.text
    r = c.simulate_post("/v1/vms", json={"name": "on9", "instance_type": 1, "pmid": 9}, headers=AUTH)
    assert r.status_code == 404 and "no machine 9" in r.json["description"]
    # pm2 has 2 CPUs and 2 GiB: a type-3 VM (4 vCPUs) does not fit there, although pm1 has room
    r = c.simulate_post("/v1/vms", json={"name": "big", "instance_type": 3, "pmid": 2}, headers=AUTH)
    assert r.status_code == 409, r.text
