"""Host balancing as a step of the reconcile loop (cms.autoscaler.rebalance), on libvirt's
test driver (which cannot migrate).

What is checked here without QEMU: the host-load rows written each tick, the plan built
from them (the daemon's and the API's alike), a migration the hypervisor refuses leaving
the replica where it was with an event, `cms balance run` applied once while balancing is
off, and scale_in_order = "consolidate". The real moves are tests/integration/test_balance_real.py.
"""

from __future__ import annotations

import time

from cms import hostplan
from cms.autoscaler import rebalance
from cms.autoscaler.reconcile import Autoscaler
from cms.metrics import DomainMetrics, HostMetrics, Tick
from cms.store import Store
from cms.virt import Fleet
from tests.support import make_config, write_node_xml
from tests.unit.test_autoscaler import FakeClock, FakeHealth, Recorder, run_until

G = "bal"


class HostLoadMetrics:
    """Every replica at `load` (or its override); each host's load is their busy cores over its CPUs."""

    def __init__(self, cpus: dict[str, int], clock=time.time) -> None:
        self.cpus = cpus
        self.clock = clock
        self.load = 0.6
        self.per_name: dict[str, float] = {}

    def sample(self, domains):
        tick = Tick(ts=self.clock())
        busy: dict[str, float] = {}
        for d in domains:
            cpu = self.per_name.get(d.name, self.load)
            tick.domains[d.uuid] = DomainMetrics(d.uuid, d.name, d.host, cpu, {}, d.vcpus, d.memory_mib * 1024, 1)
            busy[d.host] = busy.get(d.host, 0.0) + cpu * d.vcpus
        for h, b in busy.items():
            tick.hosts[h] = HostMetrics(h, b / self.cpus[h], self.cpus[h])
        return tick

    def node_cpu(self, hosts):
        return {h: 0.5 for h in hosts}


def setup(tmp_path, state_db, clock=time.time, **extra):
    uris = [write_node_xml(tmp_path / f"node{i}.xml") for i in (1, 2)]
    group = {"min": 2, "max": 3, "cooldown_s": 0.3, "warmup_s": 0,
             "threshold": {"high": 0.99, "low": 0.01, "window_s": 60, "window_in_s": 60}}
    group.update(extra.pop("group", {}))
    cfg = make_config(hosts=[{"name": "h1", "uri": uris[0], "cpus": 1}, {"name": "h2", "uri": uris[1], "cpus": 2}],
                      image={"golden": "/nonexistent/golden.qcow2"}, groups={G: group},
                      placement={"algorithm": extra.pop("algorithm", "first_fit")},
                      state_db=state_db,
                      autoscaler={"tick_s": 0.05, "drain_s": 0.2, "shutdown_timeout_s": 0.2, "health_timeout_s": 5},
                      zmq={"publish": "tcp://127.0.0.1:*", "snapshot": "tcp://127.0.0.1:*"}, **extra)
    fleet = Fleet(cfg)
    for h in fleet.hosts.values():
        h.conn()     # a test:///file URI starts fresh at each open: keep this one
    metrics = HostLoadMetrics({"h1": 1, "h2": 2}, clock)
    s = Autoscaler(cfg, fleet=fleet, metrics=metrics, health=FakeHealth(), publisher=Recorder(),
                   store=Store(cfg.state_db), clock=clock)
    return cfg, fleet, s


def ready(s):
    return sorted((t.host, t.name) for t in s.tracks.values() if t.state == "ready")


def test_host_load_rows_each_tick_and_a_refused_migration_leaves_the_replica(tmp_path, run_dir, state_db):
    cfg, fleet, s = setup(tmp_path, state_db, balancer={"enabled": True, "high": 0.8, "window_s": 0.3, "max_moves": 1})
    try:
        run_until(s, lambda: len(ready(s)) == 2, what="two ready replicas")
        assert [h for h, _n in ready(s)] == ["h1", "h1"]      # first fit fills h1 first
        # h1 (cpus = 1) carries 2 x 0.6 = 1.2 busy cores: 120% > high, while h2 is empty
        run_until(s, lambda: s.store.events(kinds=["migrate_failed"]), what="a balancing migration to be tried")
        s.balancer.wait(5)
        s.tick()
        rows = s.store.host_samples()
        by_host = {h: [r for r in rows if r.host == h] for h in ("h1", "h2")}
        assert len(by_host["h1"]) == len(by_host["h2"]) >= 3          # one row per host per tick
        last1, last2 = by_host["h1"][-1], by_host["h2"][-1]
        assert (last1.cpus, last1.vms, last1.vcpus, round(last1.cpu, 3), last1.node_cpu) == (1, 2, 2, 1.2, 0.5)
        assert (last2.cpus, last2.vms, last2.cpu) == (2, 0, 0.0)
        [started] = s.store.events(kinds=["balance_migrate"])
        assert started.data["from"] == "h1" and started.data["to"] == "h2"
        assert started.message.startswith("host h1 at 120% over 0.3s (> high 80%): moving cms-bal-")
        [failed] = s.store.events(kinds=["migrate_failed"])
        assert failed.subject == started.subject and failed.message.endswith("it stays on h1")
        # it stays where it was, ready, not held, its address never announced as moved
        t = s.tracks[started.subject]
        assert (t.host, str(t.state), t.busy) == ("h1", "ready", False)
        assert "moved" not in [e for e, _n in s.publisher.events()]
        assert {d.host for d in fleet.owned(G)} == {"h1"}
        # the budget (one migration per 300 s) holds the other replica: no second try
        for _ in range(5):
            s.tick()
        s.balancer.wait(5)
        assert len(s.store.events(kinds=["balance_migrate"])) == 1
        assert any("the budget of 1 migration(s) per 300s is spent" in n for n in s.balancer.last_plan.notes)
    finally:
        s.close()
        fleet.close()


def test_balance_run_applies_one_plan_while_balancing_is_off_and_the_api_plans_the_same(tmp_path, run_dir, state_db):
    clock = FakeClock()
    cfg, fleet, s = setup(tmp_path, state_db, clock, balancer={"enabled": False, "high": 0.8, "window_s": 0.3})
    try:
        run_until(s, lambda: len(ready(s)) == 2, what="two ready replicas")
        t0 = clock()
        for _ in range(12):       # 0.6 s of the daemon's time: twice the window, a host row per tick
            clock.advance(cfg.autoscaler.tick_s)
            s.tick()
        assert [round(r.cpu, 3) for r in s.store.host_samples() if r.host == "h1" and r.ts > t0] == [1.2] * 12
        assert s.store.events(kinds=["balance_migrate"]) == []        # off: nothing applied
        api_plan = rebalance.current_plan(cfg, s.scheduler, Store(cfg.state_db), clock())
        assert [(a.kind, a.src, a.dst) for a in api_plan.actions] == [("migrate", "h1", "h2")]
        rebalance.request_run(s.store)
        s.tick()
        s.balancer.wait(5)
        s.tick()
        [run] = s.store.events(kinds=["balance_run"])
        assert run.message == "asked once: 1 action(s)"
        [started] = s.store.events(kinds=["balance_migrate"])
        assert started.subject == api_plan.actions[0].vm and started.message == api_plan.actions[0].reason
        assert rebalance.take_run(s.store) is False                    # consumed
    finally:
        s.close()
        fleet.close()


def test_scale_in_order_consolidate_removes_the_replica_that_empties_a_host(tmp_path, run_dir, state_db):
    cfg, fleet, s = setup(tmp_path, state_db, algorithm="round_robin",
                          group={"min": 1, "max": 3, "scale_in_order": "consolidate"})
    try:
        for n in (1, 2, 3):     # one at a time: spawns started together may be placed in any order
            s.desired[G] = n
            run_until(s, lambda: len(ready(s)) == n, what=f"{n} ready replica(s)")
        hosts = [h for h, _n in ready(s)]
        assert sorted(hosts) == ["h1", "h1", "h2"]                   # round robin: h1, h2, h1
        alone = [n for h, n in ready(s) if h == "h2"]
        newest = max(s.tracks.values(), key=lambda t: t.created).name
        assert alone != [newest]                                      # "newest" would take another one
        s.desired[G] = 2
        s.memory[G].last_action_at = time.time()                                # the policy waits its cooldown
        run_until(s, lambda: len(ready(s)) == 2, what="the scale-in")
        s.wait_workers(5)
        assert alone[0] not in [n for _h, n in ready(s)]
        assert all(d.host == "h1" for d in fleet.owned(G) if d.alive)
    finally:
        s.close()
        fleet.close()


def test_mem_use_from_balloon_stats():
    from cms.autoscaler.balance_model import mem_use
    assert mem_use({"balloon.available": 1000, "balloon.usable": 250}) == 0.75
    assert mem_use({"balloon.current": 524288}) is None          # the guest reports nothing
    assert hostplan.Limits().max_moves == 2


def test_the_api_shows_the_plan_and_records_a_run(tmp_path, run_dir, state_db):
    from cms.store import HostSample, Sample
    from tests.unit.test_api import AUTH, build
    hosts = [write_node_xml(tmp_path / "a.xml", cpus=2, memory_kib=4 * 1024 * 1024),
             write_node_xml(tmp_path / "b.xml", cpus=4, memory_kib=4 * 1024 * 1024)]
    c, deps = build(tmp_path, state_db, hosts=hosts, overcommit=4.0)
    try:
        for name in ("v1", "v2"):
            assert c.simulate_post("/v1/vms", json={"name": name, "instance_type": 1}, headers=AUTH).status_code == 201
        doms = sorted(d.name for d in deps.fleet.owned())
        assert doms == ["cms-vm-1", "cms-vm-2"] and all(d.host == "pm1" for d in deps.fleet.owned())
        now = time.time()
        deps.store.add_host_samples([HostSample(now - 40 + i, h, load, 2, 2, 2, 1000)
                                     for i in range(41) for h, load in (("pm1", 0.9), ("pm2", 0.0))])
        deps.store.add_samples([Sample(now - 40 + i, "pm1", d, "", 0.9, 1, 524288, "running")
                                for i in range(41) for d in doms])
        plan = c.simulate_get("/v1/balance/plan").json
        assert plan["enabled"] is False and plan["limits"]["high"] == 0.8 and plan["notes"] == []
        [a] = plan["actions"]
        assert (a["kind"], a["strategy"], a["src"], a["dst"]) == ("migrate", "relief", "pm1", "pm2")
        assert a["reason"].startswith("host pm1 at 90% over 30s (> high 80%): moving cms-vm-")
        assert a["data"]["to_load_after"] == 0.225
        assert c.simulate_post("/v1/balance/run").status_code == 401
        r = c.simulate_post("/v1/balance/run", headers=AUTH)
        assert r.status_code == 202 and r.json["pending"] is True and r.json["plan"]["actions"][0]["vm"] == a["vm"]
        [ev] = deps.store.events(kinds=["balance_request"])
        assert ev.id == r.json["event_id"] and "1 action(s) now" in ev.message
        assert rebalance.take_run(deps.store) is True
        spec = c.simulate_get("/v1/openapi.json").json
        assert "/v1/balance/plan" in spec["paths"] and "BalancePlan" in spec["components"]["schemas"]
    finally:
        deps.fleet.close()


def test_cli_balance_plan_and_run_against_the_api(tmp_path, run_dir, capsys, state_db):
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from cms import cli
    from cms.store import HostSample, Sample
    from tests.unit.test_api import AUTH, TOKEN, build

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    hosts = [write_node_xml(tmp_path / "a.xml", cpus=2, memory_kib=4 * 1024 * 1024),
             write_node_xml(tmp_path / "b.xml", cpus=4, memory_kib=4 * 1024 * 1024)]
    client, deps = build(tmp_path, state_db, hosts=hosts, overcommit=4.0)
    for name in ("v1", "v2"):
        assert client.simulate_post("/v1/vms", json={"name": name, "instance_type": 1}, headers=AUTH).status_code == 201
    now = time.time()
    deps.store.add_host_samples([HostSample(now - 40 + i, "pm1", 0.9, 2, 2, 2, 1000) for i in range(41)])
    deps.store.add_samples([Sample(now - 40 + i, "pm1", d, "", 0.9, 1, 524288, "running")
                            for i in range(41) for d in ("cms-vm-1", "cms-vm-2")])
    srv = make_server("127.0.0.1", 0, client.app, handler_class=Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_port}"
    try:
        assert cli.main(["--url", url, "balance", "plan"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("balancing ([balancer] enabled = false: `cms balance run` applies one plan): 1 action(s)")
        assert "migrate  relief    cms-vm-" in out and "  why: host pm1 at 90% over 30s (> high 80%)" in out
        assert cli.main(["--url", url, "--token", TOKEN, "balance", "run"]) == 0
        assert "asked cms-autoscaler to apply one plan on its next tick (event " in capsys.readouterr().out
        # --wait with no daemon to apply it: one line, exit 1
        assert cli.main(["--url", url, "--token", TOKEN, "balance", "run", "--wait", "1"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("cms: no outcome within 1s (is cms-autoscaler running?)") and err.count("\n") == 1
    finally:
        srv.shutdown()
        deps.fleet.close()
