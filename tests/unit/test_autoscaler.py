"""The reconcile loop on libvirt's test driver, with injected metrics and health checks."""

from __future__ import annotations

import threading
import time

import pytest

from cms.autoscaler import daemon
from cms.autoscaler.lifecycle import State
from cms.autoscaler.publisher import NullPublisher
from cms.autoscaler.reconcile import Autoscaler
from cms.metrics import DomainMetrics, Tick
from cms.store import Store
from cms.virt import Fleet
from tests.support import make_config, write_node_xml
from cms.lab.realstack import wait_until

G = "tscale"


class FakeClock:
    """The daemon's injectable clock: it moves only when a test advances it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeMetrics:
    """CPU per replica: `load` for every replica, or a per-name override."""

    def __init__(self, clock=time.time) -> None:
        self.load: float | None = 0.5
        self.per_name: dict[str, float | None] = {}
        self.calls = 0
        self.clock = clock

    def sample(self, domains):
        self.calls += 1
        tick = Tick(ts=self.clock())
        for d in domains:
            cpu = self.per_name.get(d.name, self.load)
            tick.domains[d.uuid] = DomainMetrics(d.uuid, d.name, d.host, cpu, {}, d.vcpus, d.memory_mib * 1024, 1)
        return tick


class FakeHealth:
    def __init__(self) -> None:
        self.down_ports: set[int] = set()
        self.in_flight_calls: list[int] = []

    def healthy(self, address, port):
        return port not in self.down_ports

    def in_flight(self, address, port):
        self.in_flight_calls.append(port)
        return 0


class Recorder(NullPublisher):
    def __init__(self) -> None:
        super().__init__()
        self.updates = []

    def announce(self, event, replica, reason=""):
        u = super().announce(event, replica, reason)
        self.updates.append(u)
        return u

    def events(self):
        return [(u.event, u.replica) for u in self.updates]


def cfg_for(tmp_path, uri, *, state_db=None, **group):
    g = {"min": 1, "max": 3, "cooldown_s": 0.3, "warmup_s": 0,
         "threshold": {"high": 0.75, "low": 0.25, "window_s": 0.4, "window_in_s": 0.6}}
    for k, v in group.items():
        g[k] = {**g.get(k, {}), **v} if isinstance(v, dict) else v
    return make_config(hosts=[{"name": "n1", "uri": uri}], image={"golden": "/nonexistent/golden.qcow2"},
                       groups={G: g}, state_db=state_db or str(tmp_path / "state.db"),
                       autoscaler={"tick_s": 0.05, "drain_s": 0.5, "shutdown_timeout_s": 0.5,
                                   "health_timeout_s": 5, "health_failures": 2},
                       zmq={"publish": "tcp://127.0.0.1:*", "snapshot": "tcp://127.0.0.1:*"})


@pytest.fixture
def env(tmp_path, run_dir, state_db):
    uri = write_node_xml(tmp_path / "node.xml")
    cfg = cfg_for(tmp_path, uri, state_db=state_db)
    fleet = Fleet(cfg)
    fleet.host("n1").conn()  # a test:///file URI starts fresh at each open: keep this one for the test
    made = []

    def new(**kw):
        s = Autoscaler(kw.pop("cfg", cfg), fleet=fleet, metrics=kw.pop("metrics", FakeMetrics()), health=kw.pop("health", FakeHealth()),
                       publisher=Recorder(), store=Store(cfg.state_db), **kw)
        made.append(s)
        return s

    yield cfg, fleet, new
    for s in made:
        s.close()
    fleet.close()


def run_until(s, pred, timeout=10.0, what="condition"):
    def step():
        s.tick()
        return pred()
    return wait_until(step, timeout, interval=s.cfg.autoscaler.tick_s, what=what)


def ready_names(s):
    return sorted(t.name for t in s.tracks.values() if t.state == "ready")


def test_min_then_scale_out_on_sustained_overload(env):
    cfg, fleet, new = env
    s = new()
    run_until(s, lambda: len(ready_names(s)) == 1, what="first replica ready")
    first = ready_names(s)[0]
    assert s.publisher.events()[:2] == [("added", first), ("ready", first)]
    s.metrics.load = 0.95
    run_until(s, lambda: len(ready_names(s)) == 2, what="second replica ready")
    assert len(fleet.owned(G)) == 2
    decisions = [e for e in s.store.events(kinds=["decision"])]
    assert decisions and "scale_out" in decisions[-1].message and "> high 0.75" in decisions[-1].message
    # the samples were persisted each tick
    assert s.store.samples(group=G)


def test_transient_spike_gives_no_action(env):
    cfg, fleet, new = env
    clock = FakeClock()
    s = new(clock=clock, metrics=FakeMetrics(clock))
    run_until(s, lambda: len(ready_names(s)) == 1, what="first replica ready")
    base = len(s.publisher.updates)
    for i in range(40):                                   # 2 s of the daemon's time: 5 windows
        clock.advance(cfg.autoscaler.tick_s)
        s.metrics.load = 0.95 if i % 5 == 0 else 0.5      # one hot tick in five
        s.tick()
    assert len(s.history.series(ready_names(s)[0])) >= 40, "every tick was measured"
    assert len(s.publisher.updates) == base
    assert s.store.events(kinds=["decision"]) == []
    assert len(fleet.owned(G)) == 1


def test_scale_in_announces_draining_before_removed(env):
    cfg, fleet, new = env
    s = new()
    s.metrics.load = 0.95
    run_until(s, lambda: len(ready_names(s)) == 2, what="two ready")
    s.metrics.load = 0.05
    run_until(s, lambda: len(fleet.owned(G)) == 1 and any(e == "removed" for e, _ in s.publisher.events()),
              what="scale in to 1")
    ev = s.publisher.events()
    victim = next(n for e, n in ev if e == "draining")
    assert ev.index(("draining", victim)) < ev.index(("removed", victim))
    assert victim == max(n for e, n in ev if e == "ready")   # newest first
    assert s.health.in_flight_calls, "drain asked /status for in-flight work"
    assert fleet.host("n1").storage.list_volumes(cfg.libvirt.pool) == [d.name + ".qcow2" for d in fleet.owned(G)]


def test_destroyed_replica_is_failed_then_replaced(env):
    cfg, fleet, new = env
    s = new()
    run_until(s, lambda: len(ready_names(s)) == 1, what="ready")
    [victim] = ready_names(s)
    fleet.host("n1").guest(victim).destroy()
    run_until(s, lambda: len(ready_names(s)) == 1 and victim not in s.tracks, what="replacement ready")
    ev = s.publisher.events()
    i_failed = ev.index(("failed", victim))
    assert ("removed", victim) in ev[i_failed:]
    [new_name] = ready_names(s)
    assert new_name != victim and ev.index(("added", new_name)) > i_failed
    assert [d.name for d in fleet.owned(G)] == [new_name]


def test_failed_health_checks_replace(env):
    cfg, fleet, new = env
    s = new()
    run_until(s, lambda: len(ready_names(s)) == 1, what="ready")
    [victim] = ready_names(s)
    port = s.tracks[victim].port
    s.health.down_ports.add(port)
    run_until(s, lambda: ("failed", victim) in s.publisher.events(), what="failed")
    s.health.down_ports.discard(port)   # the replacement may get the freed port
    run_until(s, lambda: victim not in s.tracks and len(ready_names(s)) == 1, what="replacement")
    assert "failed 2 times" in next(e.message for e in s.store.events(kinds=["failed"]) if e.subject == victim)


def test_restart_rebuilds_the_view(env):
    cfg, fleet, new = env
    a = new()
    a.metrics.load = 0.95
    run_until(a, lambda: len(ready_names(a)) == 2, what="two ready")
    names = ready_names(a)
    a.close()
    b = new()
    b.metrics.load = 0.5
    run_until(b, lambda: len(ready_names(b)) == 2, what="adopted replicas ready")
    assert ready_names(b) == names
    assert sorted(d.name for d in fleet.owned(G)) == names
    assert [e for e, _ in b.publisher.events()] == ["added", "added", "ready", "ready"] or \
        sorted(b.publisher.events()) == sorted([("added", n) for n in names] + [("ready", n) for n in names])
    for _ in range(5):
        b.tick()
    assert sorted(d.name for d in fleet.owned(G)) == names        # no duplicate spawned


def test_restart_cleans_leftovers(env):
    cfg, fleet, new = env
    a = new()
    run_until(a, lambda: len(ready_names(a)) == 1, what="ready")
    a.close()
    h = fleet.host("n1")
    [keep] = [d.name for d in fleet.owned(G)]
    # a half-made replica (defined, never started) and an orphan overlay with no domain
    from cms.virt import OwnerMeta
    fleet.build_on("n1", f"cms-{G}-1", vcpus=1, memory_mib=128, meta=OwnerMeta(group=G))
    h.guest(f"cms-{G}-1").destroy()
    h.storage.create_overlay(cfg.libvirt.pool, f"cms-{G}-2.qcow2", cfg.image.golden)
    b = new()
    run_until(b, lambda: ready_names(b) == [keep] and len(fleet.owned(G)) == 1, what="cleanup")
    assert h.storage.list_volumes(cfg.libvirt.pool) == [keep + ".qcow2"]


def test_libvirt_down_is_retried_not_fatal(env, caplog):
    cfg, fleet, new = env
    s = new()
    h = fleet.host("n1")
    real = h.stats.owned_domains
    from cms import errors

    def down(group=None):
        raise errors.HostUnreachable("cannot connect", "n1")
    h.stats.owned_domains = down
    try:
        with caplog.at_level("WARNING"):
            for _ in range(3):
                s.tick()
        # the only host is suspect: nothing is placed anywhere, and it says so
        assert "host n1 did not answer this tick" in caplog.text and fleet.owned(G) == [] and s.tracks == {}
    finally:
        h.stats.owned_domains = real
    run_until(s, lambda: len(ready_names(s)) == 1, what="ready after libvirt came back")


def test_dry_run_acts_on_nothing_and_once_exits(tmp_path, run_dir, state_db):
    uri = write_node_xml(tmp_path / "node.xml")
    cfg = cfg_for(tmp_path, uri, state_db=state_db, min=2)
    toml = tmp_path / "cms.toml"
    toml.write_text(f"""
state_db = "{state_db}"
hosts = [{{name = "n1", uri = "{uri}"}}]
[image]
golden = "/nonexistent/golden.qcow2"
[zmq]
publish = "tcp://127.0.0.1:*"
snapshot = "tcp://127.0.0.1:*"
[groups.{G}]
min = 2
""")
    fleet = Fleet(cfg)
    fleet.host("n1").conn()
    try:
        rc = daemon.main(["--config", str(toml), "--dry-run", "--once"], fleet=fleet, metrics=FakeMetrics(),
                         health=FakeHealth())
        assert rc == 0
        assert fleet.owned(G) == []
        # without --dry-run the same single tick does act, and still exits
        rc = daemon.main(["--config", str(toml), "--once", "--group", G], fleet=fleet, metrics=FakeMetrics(),
                         health=FakeHealth())
        assert rc == 0 and len(fleet.owned(G)) == 2
    finally:
        fleet.close()


def test_bad_config_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[autoscaler]\ntick_s = -1\n")
    with pytest.raises(SystemExit) as ei:
        daemon.main(["--config", str(bad), "--once"])
    assert ei.value.code == 2


def test_stop_event_ends_the_loop_while_it_waits_for_the_next_tick(env):
    from dataclasses import replace
    cfg, fleet, new = env
    stop = threading.Event()
    s = new(stop=stop, cfg=replace(cfg, autoscaler=replace(cfg.autoscaler, tick_s=3600.0)))
    t = threading.Thread(target=s.run)
    t.start()
    # after its first tick the loop waits an hour for the next: only the stop event ends that
    wait_until(lambda: (s.status().get("tick") or {}).get("seq"), 10, 0.01, "the first tick")
    stop.set()
    t.join(5)
    s.close(0.5)
    assert not t.is_alive()


def test_sd_notify_ready_and_stopping_on_an_abstract_socket(tmp_path, run_dir, monkeypatch):
    import os
    import socket as pysocket
    uri = write_node_xml(tmp_path / "node.xml")
    toml = tmp_path / "cms.toml"
    toml.write_text(f'state_db = "{tmp_path / "s.db"}"\nhosts = [{{name = "n1", uri = "{uri}"}}]\n'
                    f'[zmq]\npublish = "tcp://127.0.0.1:*"\nsnapshot = "tcp://127.0.0.1:*"\n[groups.{G}]\nmin = 0\n')
    name = f"cms-test-notify-{os.getpid()}"
    srv = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_DGRAM)
    srv.bind("\0" + name)
    srv.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        assert daemon.main(["--config", str(toml), "--once"], metrics=FakeMetrics(), health=FakeHealth()) == 0
        got = []
        while True:
            try:
                got.append(srv.recv(256).decode())
            except (TimeoutError, pysocket.timeout):
                break
            if got[-1] == "STOPPING=1":
                break
        assert got[0] == "READY=1" and "WATCHDOG=1" in got and got[-1] == "STOPPING=1"
    finally:
        srv.close()


def test_scale_request_from_the_api_is_applied_then_the_policy_goes_on(env):
    cfg, fleet, new = env
    s = new()
    s.metrics.load = 0.5                                   # between low and high: the policy holds
    run_until(s, lambda: len(ready_names(s)) == 1, what="first replica ready")
    s.store.request_scale(G, 3)
    run_until(s, lambda: len(ready_names(s)) == 3, what="three replicas after the request")
    assert s.store.scale_requests() == {}, "the request was consumed"
    ev = s.store.events(kinds=["scale_override"])
    assert len(ev) == 1 and ev[0].data == {"asked": 3, "desired": 3, "previous": 1}
    assert s.store.events(kinds=["decision"]) == []
    s.store.request_scale(G, 99)                           # outside min..max: clamped to max
    s.tick()
    assert s.desired[G] == 3 and s.store.events(kinds=["scale_override"])[-1].data["desired"] == 3
    s.store.request_scale(G, 1)
    run_until(s, lambda: len(fleet.owned(G)) == 1, what="back to one replica")
    # after the request's cooldown the policy acts again from the new count
    s.metrics.load = 0.95
    run_until(s, lambda: len(ready_names(s)) == 2, what="policy scale-out after the request")
    assert "scale_out" in s.store.events(kinds=["decision"])[-1].message


def test_dry_run_leaves_scale_requests_pending(env):
    cfg, fleet, new = env
    s = new(dry_run=True)
    s.store.request_scale(G, 2)
    for _ in range(3):
        s.tick()
    assert s.store.scale_requests()[G][0] == 2
    assert fleet.owned(G) == []


def test_a_removal_that_ends_between_the_listing_and_the_plan_is_not_adopted_again(env):
    """A scale-in's worker removes its replica while a tick lists the hosts: the listing still
    shows the domain, the registry no longer has it. The tick plans on the registry as it was
    before the listing, so the domain is the worker's (held), never "appeared in libvirt":
    no adoption, no "failed" when it then vanishes, no replacement. (Found on the takeover lab:
    a scale-in from 2 to 1 adopted its own victim, drained the other replica too, and spawned.)"""
    cfg, fleet, new = env
    s = new()
    s.metrics.load = 0.95
    run_until(s, lambda: len(ready_names(s)) == 2, what="two ready")
    s.metrics.load = 0.5                                  # between the thresholds: no decision
    victim = max(ready_names(s))
    s.desired[G] = 1                                      # the scale-in's decision
    t = s.registry.take(victim, (State.READY,), State.DRAINING, claim=True)   # as its worker holds it
    real = s.scheduler.list_domains

    def listing_then_removal(*a, **kw):
        out = real(*a, **kw)                              # the listing still has the victim
        if t.name in {d.name for d in out.all()}:
            fleet.remove("n1", t.name)
            s.registry.forget(t, "scale in")              # the worker ends before the plan
        return out
    s.scheduler.list_domains = listing_then_removal
    s.tick()
    s.scheduler.list_domains = real
    for _ in range(5):
        s.tick()
    events = s.publisher.events()
    assert ("failed", victim) not in events and ("removed", victim) in events
    assert not [e for e in s.store.events(kinds=["adopt"]) if e.subject == victim]
    assert [d.name for d in fleet.owned(G)] == ready_names(s) and len(ready_names(s)) == 1
