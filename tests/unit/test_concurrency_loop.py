"""The concurrency policy in the whole loop on libvirt's test driver: the /status figures go into
the history, the policy and the status snapshot; one decision for several replicas is carried
out by the planner and the executor together, from the warm pool or cold."""

from __future__ import annotations

import pytest

from cms.autoscaler.lifecycle import State
from cms.autoscaler.reconcile import Autoscaler
from cms.histogram import Counters, Figures
from cms.store import Store
from cms.virt import Fleet
from tests.support import write_node_xml
from tests.unit.test_autoscaler import G, FakeHealth, FakeMetrics, Recorder, cfg_for, ready_names, run_until

S = State


class FakeLoad:
    """A StatusPoller's answers: every replica asked has ``in_flight`` requests in flight."""

    def __init__(self) -> None:
        self.in_flight = 0.2
        self.asked: list[set[str]] = []
        self.latest: dict[str, Counters] = {}

    def poll(self, targets, deadline_s):
        self.asked.append(set(targets))
        self.latest = {n: Counters(10.0, 5, 0, 1.0, (0.1, 1.0), (3, 5, 5), 0.6) for n in targets}
        return {n: Figures(1.0, self.in_flight, 2.0, 2, 0.3, 0.2, (1, 2, 2)) for n in targets}

    def close(self):
        pass


@pytest.fixture
def loop(tmp_path, run_dir):
    uri = write_node_xml(tmp_path / "node.xml", memory_kib=16 * 1024 * 1024)
    made = []

    def new(**group):
        group["concurrency"] = {"stable_window_s": 1.0, "panic_window_s": 1.0, **group.get("concurrency", {})}
        cfg = cfg_for(tmp_path, uri, policy="concurrency", max=4, cooldown_s=0, **group)
        fleet = Fleet(cfg)
        fleet.host("n1").conn()   # a test:///file URI starts fresh at each open: keep this one
        s = Autoscaler(cfg, fleet=fleet, metrics=FakeMetrics(), health=FakeHealth(), publisher=Recorder(),
                       store=Store(cfg.state_db), load=FakeLoad())
        made.append((s, fleet))
        return s

    yield new
    for s, fleet in made:
        s.close()
        fleet.close()


def scale_outs(s):
    return [e for e in s.store.events(group=G, kinds=["decision"]) if e.data.get("action") == "scale_out"]


def test_one_decision_unparks_three_together(loop):
    s = loop(warm_pool={"size": 3, "state": "paused"})
    run_until(s, lambda: len(ready_names(s)) == 1 and sum(t.state == S.PARKED for t in s.tracks.values()) == 3,
              what="one ready and a pool of 3 parked")
    assert scale_outs(s) == []                       # 0.2 in flight: one replica is enough
    first = ready_names(s)[0]
    assert s.load.asked[-1] == {first}               # only ready replicas are polled
    s.load.in_flight = 40.0     # the first tick over the panic threshold already asks past max 4

    def used():
        return s.store.events(group=G, kinds=["warm_used"])
    # an unpark's event is written at the end of a tick, and a worker may end after a tick's write
    run_until(s, lambda: len(ready_names(s)) == 4 and len(used()) >= 3, what="four ready, three unparks recorded")
    [d] = scale_outs(s)
    assert (d.data["current"], d.data["desired"]) == (1, 4) and d.data["panicking"] is True
    assert "capped at max 4" in d.message and "panic" in d.message
    used = used()
    assert len(used) == 3 and len(s.fleet.owned(G)) == 4        # all three from the pool, no cold spawn
    s.tick()                                         # the newest ready one is polled from its next tick
    st = s.status()["groups"][G]
    assert {r["name"]: r["in_flight"] for r in st["replicas"] if r["state"] == "ready"} == dict.fromkeys(
        ready_names(s), 40.0)
    assert all(r["latency"]["buckets"] == [3, 5, 5] for r in st["replicas"] if r["state"] == "ready")
    assert s.history.series(first, kind="in_flight")[-1][1] == 40.0
    last = s.store.samples(group=G, domain=first)[-1]           # and the store's history keeps them
    assert (last.in_flight, last.rate, last.p95_s) == (40.0, 2.0, 0.3)
    early = s.store.samples(group=G, domain=first)[0]            # ...from the first tick it was polled
    assert early.in_flight == 0.2


def test_one_decision_spawns_three_together_without_a_pool(loop):
    s = loop()
    run_until(s, lambda: len(ready_names(s)) == 1, what="one ready")
    s.load.in_flight = 40.0
    run_until(s, lambda: len(ready_names(s)) == 4, what="four ready")
    [d] = scale_outs(s)
    assert (d.data["current"], d.data["desired"]) == (1, 4)
    added = [e for e in s.store.events(group=G, kinds=["added"]) if e.ts >= d.ts]
    assert len(added) == 3 and len(s.fleet.owned(G)) == 4


def test_no_scale_in_while_panicking_then_one_after_a_stable_window(loop):
    s = loop(concurrency={"stable_window_s": 2.0, "panic_window_s": 1.0})
    run_until(s, lambda: len(ready_names(s)) == 1, what="one ready")
    s.load.in_flight = 40.0
    run_until(s, lambda: len(ready_names(s)) == 4, what="four ready")
    s.load.in_flight = 0.05
    reasons: list[str] = []

    def back_to_one():
        reasons.append(s.status()["groups"][G]["last_decision"]["reason"])
        return len(ready_names(s)) == 1
    run_until(s, back_to_one, what="back to one")
    held = [i for i, r in enumerate(reasons) if "panicking: no scale-in" in r]
    assert held, reasons                 # the load fell, the stable window asked for fewer: held
    ins = [e for e in s.store.events(group=G, kinds=["decision"]) if e.data.get("action") == "scale_in"]
    assert len(ins) == 1 and (ins[0].data["current"], ins[0].data["desired"]) == (4, 1)
    assert all("scale_in" not in r for r in reasons[:held[-1] + 1])
