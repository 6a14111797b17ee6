"""The warm pool on the real stack: libvirtd, QEMU (TCG here), the golden image, ZeroMQ.

Two scenarios, to keep the boots few:
 1. paused, pool of 2, reuse_on_scale_in: the first replica boots cold with a warm_empty
    event (the pool is empty at start); the pool is prepared and parked (suspended, tagged
    warm, never announced); a scale-out unparks from it and the new replica serves correct
    results; a scale-in parks the drained replica back and the next scale-out reuses it; a
    parked replica destroyed from outside is replaced; a restarted daemon adopts the parked
    pool with no duplicate.
 2. saved and stopped, one group each with min 0 and a pool of 1: each is prepared, parked
    (managed save / shut off) and unparked by a scale request to a replica that answers
    /health and serves correct results; the first CPU figures after the restore (the
    guest's clock jumps) are no spike.
Scaling is asked through scale requests (the policy's windows are too long to act), so
the test is about the pool, not about load.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from cms.autoscaler.lifecycle import State
from cms.autoscaler.publisher import Publisher
from cms.autoscaler.reconcile import Autoscaler
from cms.lab.realstack import GOLDEN, drop_pool, real_config, wait_until
from cms.virt import Fleet
from guest import cms_work
from tests.integration.test_autoscaler_real import Feed, after_ticks

pytestmark = pytest.mark.real

BOOT = 240.0
INERT = {"high": 1.0, "low": 0.0, "window_s": 3600, "window_in_s": 3600}


def serves_correctly(address: str, port: int) -> bool:
    c = http.client.HTTPConnection(address, port, timeout=30)
    try:
        c.request("GET", "/work?payload=warm-pool&cost=1000")
        r = c.getresponse()
        body = json.loads(r.read())
    finally:
        c.close()
    return r.status == 200 and body["result"] == cms_work.result("warm-pool", 1000)


class Run:
    """The daemon in this process, its feed, and what to look at."""

    def __init__(self, cfg, fleet, groups):
        self.stop = threading.Event()
        self.s = Autoscaler(cfg, fleet=fleet, publisher=Publisher(cfg.zmq), stop=self.stop, groups=groups)
        self.feeds = {g: Feed(self.s.publisher.publish_endpoint, g) for g in groups}
        self.t = threading.Thread(target=self.s.run, daemon=True)
        self.t.start()

    def tracks(self, g, state):
        return sorted(t.name for t in self.s.registry.snapshot() if t.group == g and t.state == state)

    def ready(self, g):
        f = self.feeds[g]
        return [r for r in (f.updates[-1].replicas if f.updates else ()) if r.state == "ready"]

    def events(self, g, kind, subject=None, at_least=1):
        """The group's events of a kind (about `subject`); waits for the daemon's next write
        when there are fewer than `at_least` yet (it writes its events at the end of each tick)."""
        def found():
            got = [e for e in self.s.store.events(group=g, kinds=[kind]) if subject in (None, e.subject)]
            return got if len(got) >= at_least else None
        return wait_until(found, 5, 0.1, f"{at_least} {kind} event(s)" + (f" about {subject}" if subject else ""))

    def close(self):
        self.stop.set()
        self.t.join(10)
        assert not self.t.is_alive(), "the loop did not stop"
        self.s.close(timeout=5)
        for f in self.feeds.values():
            f.close()


def config(tmp_path, groups):
    return real_config(tmp_path, groups=groups,
                       autoscaler={"tick_s": 1, "health_timeout_s": BOOT, "health_failures": 5, "drain_s": 1,
                                   "shutdown_timeout_s": 10},
                       zmq={"publish": "tcp://127.0.0.1:*", "snapshot": "tcp://127.0.0.1:*"})


def test_paused_pool_prepared_used_reused_replaced_and_adopted(tmp_path, run_dir):
    assert GOLDEN.exists(), f"{GOLDEN} is missing: run scripts/build-image.sh"
    G = "wpool"
    cfg = config(tmp_path, {G: {"min": 1, "max": 3, "memory_mib": 384, "cooldown_s": 0, "warmup_s": 0,
                                "threshold": INERT,
                                "warm_pool": {"size": 2, "state": "paused", "reuse_on_scale_in": True}}})
    fleet = Fleet(cfg, events=True)
    host = fleet.host("local")
    runs = [Run(cfg, fleet, [G])]
    try:
        run = runs[0]
        # the first replica boots cold, and the event says the pool had none to give
        first = wait_until(lambda: run.ready(G), BOOT, 1.0, "replica 1 ready")[0]
        empty = run.events(G, "warm_empty")
        assert [e.subject for e in empty] == [first.name] and "cold boot" in empty[0].message
        # the pool is prepared: booted to /health, then suspended, tagged warm, never announced
        wait_until(lambda: len(run.tracks(G, State.PARKED)) == 2, 2 * BOOT, 1.0, "a pool of 2 parked")
        pool = run.tracks(G, State.PARKED)
        for d in fleet.owned(G):
            if d.name in pool:
                assert d.state == "paused" and d.meta.warm
        assert {u.replica for u in run.feeds[G].updates}.isdisjoint(pool), "a warm replica was announced"
        assert sorted(e.subject for e in run.events(G, "warm_prepared", at_least=2)) == pool

        # scale out: from the pool, serving at once and correctly
        run.s.store.request_scale(G, 2)
        wait_until(lambda: len(run.ready(G)) == 2, 60, 0.05, "two ready")
        [used] = [r for r in run.ready(G) if r.name != first.name]
        assert used.name == pool[0], "the oldest parked replica is taken first"
        assert serves_correctly(used.address, used.port)
        u = run.events(G, "warm_used", used.name)
        assert u[0].data["mode"] == "paused" and u[0].data["seconds"] > 0    # resumed from the pool (how fast: bench/warm_pool.py)
        assert not next(d for d in fleet.owned(G) if d.name == used.name).meta.warm, "tagged serving"

        # scale in: the drained replica goes back into the pool (pool target min(2, 3 - 1) = 2)
        run.s.store.request_scale(G, 1)
        wait_until(lambda: used.name in run.tracks(G, State.PARKED), 60, 0.5, "the drained replica parked")
        parked_back = run.events(G, "warm_parked", used.name)
        assert "reused on scale-in" in parked_back[0].message
        ev = run.feeds[G].events()
        assert ev.index(("draining", used.name)) < ev.index(("removed", used.name))
        # the next scale-out reuses it
        run.s.store.request_scale(G, 2)
        wait_until(lambda: used.name in {r.name for r in run.ready(G)}, 60, 0.05, "the reused replica ready")
        assert serves_correctly(used.address, used.port)
        run.s.store.request_scale(G, 1)
        wait_until(lambda: len(run.tracks(G, State.PARKED)) == 2 and len(run.ready(G)) == 1, 60, 0.5,
                   "back to one serving and a pool of 2")

        # a parked replica destroyed from outside is replaced
        victim = run.tracks(G, State.PARKED)[-1]
        destroyed_at = time.time()
        host.domains.remove(victim, cfg.libvirt.pool)
        wait_until(lambda: len(run.tracks(G, State.PARKED)) == 2 and victim not in run.tracks(G, State.PARKED),
                   BOOT, 1.0, "the destroyed warm replica replaced")
        # seen gone (destroyed and undefined) or seen shut off on its way out: replaced either way
        gone = wait_until(lambda: [e for e in run.s.store.events(group=G, kinds=["removed"])
                                   if e.subject == victim and ("destroyed from outside" in e.message
                                                               or "not paused: replacing it" in e.message)],
                          5, 0.1, "the destroyed replica's removed event")
        assert gone[-1].ts >= destroyed_at
        # the refill may start in the tick that saw it gone, before its removal is recorded
        assert [e for e in run.events(G, "warm_refill") if e.ts >= destroyed_at], "no refill after it"

        # restart: the new daemon adopts the parked pool, spawns nothing, orphans nothing
        before = sorted(d.name for d in fleet.owned(G))
        parked = run.tracks(G, State.PARKED)
        mark = max(e.id for e in run.s.store.events(limit=100000))
        run.close()
        runs.remove(run)
        run = Run(cfg, fleet, [G])
        runs.append(run)
        wait_until(lambda: run.tracks(G, State.PARKED) == parked and len(run.ready(G)) == 1, 120, 0.5,
                   "pool adopted after the restart")
        after_ticks(run.s, 5)      # five plans made since: none may spawn
        assert sorted(d.name for d in fleet.owned(G)) == before, "a duplicate was spawned"
        adopted = run.events(G, "adopt", at_least=len(before))
        assert all(e.id > mark for e in adopted)
        assert sorted(e.subject for e in adopted if e.data.get("warm")) == parked
        assert [e.subject for e in adopted if not e.data.get("warm")] == [n for n in before if n not in parked]
        after = run.s.store.events(since_id=mark, group=G)
        assert not [e for e in after if e.kind in ("warm_refill", "added") and e.subject not in before]
        assert host.storage.list_volumes(cfg.libvirt.pool) == [n + ".qcow2" for n in before]
        # the API's view of it: replica states recorded for cms-api
        rows = {r.name: r.state for r in run.s.store.replicas(G)}
        assert sorted(n for n, st in rows.items() if st == "parked") == parked
    finally:
        for r in runs:
            r.close()
        for d in fleet.owned(G):
            fleet.remove(d.host, d.name)
        drop_pool(host, cfg.libvirt.pool)
        fleet.close()


def test_saved_and_stopped_pools_unpark_to_serving_replicas(tmp_path, run_dir):
    assert GOLDEN.exists(), f"{GOLDEN} is missing: run scripts/build-image.sh"
    groups = {f"w{mode}": {"min": 0, "max": 2, "memory_mib": 384, "cooldown_s": 0, "warmup_s": 0,
                           "threshold": INERT, "warm_pool": {"size": 1, "state": mode}}
              for mode in ("saved", "stopped")}
    cfg = config(tmp_path, groups)
    fleet = Fleet(cfg, events=True)
    run = Run(cfg, fleet, list(groups))
    try:
        for g in groups:
            wait_until(lambda g=g: len(run.tracks(g, State.PARKED)) == 1, 2 * BOOT, 1.0, f"{g}: one parked")
        owned = {d.name: d for d in fleet.owned()}
        [saved] = run.tracks("wsaved", State.PARKED)
        [stopped] = run.tracks("wstopped", State.PARKED)
        assert owned[saved].state == "shutoff" and owned[saved].saved and owned[saved].meta.warm
        assert owned[stopped].state == "shutoff" and not owned[stopped].saved and owned[stopped].meta.warm
        for g, name in (("wsaved", saved), ("wstopped", stopped)):
            run.s.store.request_scale(g, 1)
            [r] = wait_until(lambda g=g: run.ready(g), BOOT, 0.05, f"{g}: unparked and ready")
            assert r.name == name and serves_correctly(r.address, r.port)
            used = run.events(g, "warm_used")
            assert [e.subject for e in used] == [name] and used[0].data["mode"] == g[1:]
        # the restored guest's clock jumped; the autoscaler's CPU figures after it do not
        for g, name in (("wsaved", saved), ("wstopped", stopped)):
            since = run.events(g, "warm_used")[0].ts - 5

            def figures(name=name, since=since):
                got = [x.cpu for x in run.s.store.samples(domain=name, since=since) if x.cpu is not None]
                return got if len(got) >= 5 else None
            got = wait_until(figures, 60, 0.5, f"five CPU figures of {name} after its unpark")
            assert max(got) < 1.5, (name, got)
    finally:
        run.close()
        for d in fleet.owned():
            if d.meta.group in groups:
                fleet.remove(d.host, d.name)
        drop_pool(fleet.host("local"), cfg.libvirt.pool)
        fleet.close()
