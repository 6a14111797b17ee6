"""The autoscaler on the real stack: libvirtd, QEMU (TCG here), the golden image, ZeroMQ.

One scenario, to keep CI time down: 1 replica -> real load -> 2 -> load stops -> 1 (drained
before removed) -> a replica destroyed behind the daemon's back -> failed and replaced ->
daemon restarted -> the same set, no duplicate, no orphan volume.
"""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from cms.autoscaler.publisher import Publisher
from cms.autoscaler.reconcile import Autoscaler
from cms.messages import decode_update, topic
from cms.virt import Fleet
from cms.lab.realstack import GOLDEN, drop_pool, real_config, wait_until, work

pytestmark = pytest.mark.real

G = "asreal"
BOOT = 240.0   # a boot under TCG on 2 shared cores, with load running


class Feed:
    """A SUB on the daemon's PUB that keeps every update, in arrival order."""

    def __init__(self, endpoint: str, group: str = G) -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic(group))
        self.sub.connect(endpoint)
        self.updates = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop.is_set():
            if self.sub.poll(100):
                self.updates.append(decode_update(self.sub.recv_multipart()))

    def events(self):
        return [(u.event, u.replica) for u in list(self.updates)]

    def close(self):
        self.stop.set()
        self.t.join(2)
        self.ctx.destroy(0)


def settled(s: Autoscaler, fleet: Fleet) -> str | None:
    """The one replica's name when the daemon tracks exactly one, ready and held by no worker,
    and libvirt has its domain and no other of the group; else None."""
    owned = [d.name for d in fleet.owned(G)]
    tracks = [(t.name, str(t.state), t.busy) for t in s.registry.snapshot()]
    return owned[0] if len(owned) == 1 and tracks == [(owned[0], "ready", False)] else None


def story(s: Autoscaler, feed: Feed) -> str:
    """What the daemon did and said, for a failure's message: its events and its feed."""
    events = "\n".join(f"  {e.kind} {e.subject}: {e.message}" for e in s.store.events(group=G)[-30:])
    return (f"tracks {[(t.name, str(t.state), t.busy) for t in s.registry.snapshot()]}, hosts "
            f"{s.hosts.states()}\nfeed {feed.events()}\nevents:\n{events}")


class Load:
    def __init__(self, address, port, cost, threads=4):
        self.stop = threading.Event()
        self.done = 0
        self.ts = [threading.Thread(target=self._run, args=(address, port, cost), daemon=True) for _ in range(threads)]
        for t in self.ts:
            t.start()

    def _run(self, address, port, cost):
        while not self.stop.is_set():
            try:
                work(address, port, cost)
                self.done += 1
            except OSError:
                self.stop.wait(0.2)

    def close(self):
        self.stop.set()
        for t in self.ts:
            t.join(35)


def tick_seq(s) -> int:
    """How many ticks the daemon `s` has finished (its status' tick sequence)."""
    return (s.status().get("tick") or {}).get("seq", 0)


def after_ticks(s, n: int, stop_early=lambda: False) -> None:
    """Wait until the daemon `s` has run `n` more ticks (a span in the loop's own steps, not
    in seconds), or until `stop_early()` holds."""
    mark = tick_seq(s)
    wait_until(lambda: tick_seq(s) >= mark + n or stop_early(), 30 + 10 * n * s.cfg.autoscaler.tick_s, 0.1,
               f"{n} more ticks")


def calibrate(address, port, want_s=0.2):
    cost = 20000
    for _ in range(4):
        t0 = time.monotonic()
        work(address, port, cost)
        took = time.monotonic() - t0
        if took >= want_s:
            break
        cost = min(1_000_000, int(cost * want_s / max(took, 0.005) * 1.3))
    return cost


def test_scale_out_in_replace_restart(tmp_path, run_dir):
    assert GOLDEN.exists(), f"{GOLDEN} is missing: run scripts/build-image.sh"
    cfg = real_config(
        tmp_path,
        groups={G: {"min": 1, "max": 2, "vcpus": 1, "memory_mib": 384, "cooldown_s": 3, "warmup_s": 4,
                    "threshold": {"high": 0.35, "low": 0.15, "window_s": 3, "window_in_s": 6}}},
        autoscaler={"tick_s": 1, "health_timeout_s": BOOT, "health_failures": 5, "drain_s": 3,
                    "shutdown_timeout_s": 5},
        zmq={"publish": "tcp://127.0.0.1:*", "snapshot": "tcp://127.0.0.1:*"},
    )
    fleet = Fleet(cfg, events=True)
    host = fleet.host("local")
    daemons, feeds, loads = [], [], []

    def start_daemon():
        stop = threading.Event()
        s = Autoscaler(cfg, fleet=fleet, publisher=Publisher(cfg.zmq), stop=stop, groups=[G])
        feed = Feed(s.publisher.publish_endpoint)
        t = threading.Thread(target=s.run, daemon=True)
        t.start()
        daemons.append((s, t))
        feeds.append(feed)
        return s, feed

    def stop_daemon(s, t):
        s.stop.set()
        t.join(5)
        assert not t.is_alive(), "the loop did not stop"
        s.close(timeout=5)

    def ready(feed):
        return [r for r in (feed.updates[-1].replicas if feed.updates else ()) if r.state == "ready"]

    try:
        s, feed = start_daemon()
        # 1. the group minimum: one replica, booted and healthy
        first = wait_until(lambda: ready(feed), BOOT, 1.0, "replica 1 ready")[0]
        assert feed.events()[:2] == [("added", first.name), ("ready", first.name)]
        cost = calibrate(first.address, first.port)

        # 2. real load on it: the daemon goes 1 -> 2
        load = Load(first.address, first.port, cost)
        loads.append(load)
        wait_until(lambda: len(ready(feed)) == 2, BOOT, 1.0, "replica 2 ready (scale out)")
        second = next(r for r in ready(feed) if r.name != first.name)
        assert ("ready", second.name) in feed.events()
        dec = s.store.events(group=G, kinds=["decision"])
        assert any("scale_out" in e.message and "> high 0.35" in e.message for e in dec)
        assert load.done > 0

        # 3. load stops: 2 -> 1, draining announced before removed
        load.close()
        wait_until(lambda: any(e == "removed" for e, _ in feed.events()), 120, 1.0, "scale in")
        ev = feed.events()
        victim = next(n for e, n in ev if e == "draining")
        assert ev.index(("draining", victim)) < ev.index(("removed", victim))
        # the daemon tracks one replica, ready, and libvirt has its domain and no other: a count
        # of domains alone can be taken while a removal or a replacement is under way
        survivor = wait_until(lambda: settled(s, fleet), 60, 0.5, "one ready replica, the only domain")

        # 4. a replica destroyed behind the daemon's back: failed at once, then replaced
        host.guest(survivor).destroy()
        try:
            wait_until(lambda: ("failed", survivor) in feed.events(), 30, 0.5, "failed announced")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {survivor} destroyed; {story(s, feed)}") from None
        wait_until(lambda: [r for r in ready(feed) if r.name != survivor], BOOT, 1.0, "replacement ready")
        ev = feed.events()
        assert ev.index(("failed", survivor)) < ev.index(("removed", survivor))

        # 5. restart: the new daemon adopts what runs, spawns nothing, orphans nothing
        before = [wait_until(lambda: settled(s, fleet), 60, 0.5, "settled at one replica")]
        stop_daemon(*daemons.pop())
        mark = max((e.id for e in s.store.events(limit=100000)), default=0)
        s2, _feed2 = start_daemon()
        wait_until(lambda: [(r.name, r.state) for r in s2.publisher.replicas(G)] == [(before[0], "ready")],
                   60, 0.5, "adopted replica ready")
        after_ticks(s2, 5)      # five plans made since: none may spawn
        assert sorted(d.name for d in fleet.owned(G)) == before, "a duplicate was spawned"
        after = s2.store.events(since_id=mark, group=G)
        assert [e.subject for e in after if e.kind == "adopt"] == before
        assert [e.subject for e in after if e.kind == "added"] == before     # nothing new spawned
        assert host.storage.list_volumes(cfg.libvirt.pool) == [n + ".qcow2" for n in before]
    finally:
        for load in loads:
            load.close()
        for s, t in daemons:
            s.stop.set()
            t.join(5)
            s.close(timeout=2)
        for f in feeds:
            f.close()
        for d in fleet.owned(G):
            fleet.remove(d.host, d.name)
        drop_pool(host, cfg.libvirt.pool)
        fleet.close()
