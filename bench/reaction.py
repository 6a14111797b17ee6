"""Reaction time of the autoscaler on the real stack, from a load step to a usable replica.

Starts the daemon in-process (group min 1, max 2, window 3 s, tick 1 s) with the real
golden image, waits for replica 1, then steps the load up (threads calling GET /work) and
times, from that step:
  decision   the scale-out decision (the daemon's event record)
  defined    libvirt's "defined" lifecycle event for replica 2 (an observer connection)
  started    libvirt's "started" event
  health_ok  the first 200 from replica 2's /health (polled here every 100 ms)
  published  the "ready" update for replica 2 arriving on a SUB socket
Prints each stage as it happens on stderr and ONE JSON line on stdout. Cleans up.

    .venv/bin/python bench/reaction.py [--cost N] [--threads 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import queue
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import zmq  # noqa: E402

from cms import config  # noqa: E402
from cms.autoscaler.publisher import Publisher  # noqa: E402
from cms.autoscaler.reconcile import Autoscaler  # noqa: E402
from cms.lab.realstack import drop_pool, wait_until  # noqa: E402
from cms.messages import decode_update, topic  # noqa: E402
from cms.virt import Fleet  # noqa: E402

G = "bench"


def get(address, port, path, timeout=30.0):
    c = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cost", type=int, default=0, help="pbkdf2 iterations per request (0: calibrate to ~200 ms)")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--high", type=float, default=0.3, help="scale-out threshold (a shared host gives a replica less than a core)")
    ap.add_argument("--boot-timeout", type=float, default=240.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("CMS_RUN_DIR", tempfile.mkdtemp(prefix="cms-bench-"))
    pool = f"cmsbench-{uuid.uuid4().hex[:8]}"
    tmp = tempfile.mkdtemp(prefix="cms-reaction-")
    cfg = config.parse({
        "hosts": [{"name": "local", "uri": "qemu:///system"}],
        "libvirt": {"domain_type": "auto", "pool": pool, "pool_path": f"/var/lib/cms/test/{pool}"},
        "state_db": f"{tmp}/state.db",
        "groups": {G: {"min": 1, "max": 2, "memory_mib": 384, "cooldown_s": 3, "warmup_s": 4,
                       "threshold": {"high": args.high, "low": 0.05, "window_s": 3, "window_in_s": 600}}},
        "autoscaler": {"tick_s": 1, "health_timeout_s": args.boot_timeout, "health_failures": 5},
        "zmq": {"publish": "tcp://127.0.0.1:*", "snapshot": "tcp://127.0.0.1:*"},
    }, "<bench/reaction>")
    fleet = Fleet(cfg, events=True)
    observer = Fleet(cfg, events=True)      # its own connection: lifecycle events for the bench alone
    observer.host("local").conn()
    stop = threading.Event()
    scaler = Autoscaler(cfg, fleet=fleet, publisher=Publisher(cfg.zmq), stop=stop, groups=[G])
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, topic(G))
    sub.connect(scaler.publisher.publish_endpoint)
    updates: "queue.Queue[tuple[float, object]]" = queue.Queue()
    load_stop = threading.Event()

    def listen():
        while not stop.is_set():
            if sub.poll(50):
                updates.put((time.time(), decode_update(sub.recv_multipart())))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    loop = threading.Thread(target=scaler.run, daemon=True)
    loop.start()
    result = {"bench": "reaction", "domain_type": fleet.host("local").domain_type("auto")}
    try:
        seen = []

        def first_ready():
            while not updates.empty():
                seen.append(updates.get())
            return next((u for _, u in seen if u.event == "ready"), None)

        r1 = wait_until(first_ready, args.boot_timeout, 0.2, "replica 1 ready").replicas[0]
        cost = args.cost
        if not cost:
            cost = 20000
            for _ in range(4):
                t0 = time.monotonic()
                get(r1.address, r1.port, f"/work?payload=x&cost={cost}")
                took = time.monotonic() - t0
                if took >= 0.2:
                    break
                cost = min(1_000_000, int(cost * 0.2 / max(took, 0.005) * 1.3))
        time.sleep(cfg.groups[G].warmup_s + 1)
        q = observer.event_queue
        while q is not None and not q.empty():
            q.get_nowait()
        seen.clear()
        while not updates.empty():
            updates.get()

        def hammer():
            while not load_stop.is_set():
                try:
                    get(r1.address, r1.port, f"/work?payload=x&cost={cost}")
                except OSError:
                    load_stop.wait(0.1)

        t0 = time.time()
        print(f"[reaction] load step: {args.threads} threads, cost {cost}", file=sys.stderr)
        for _ in range(args.threads):
            threading.Thread(target=hammer, daemon=True).start()
        stages: dict[str, float] = {}
        new_name = None
        deadline = time.monotonic() + args.boot_timeout + 60
        while len(stages) < 5 and time.monotonic() < deadline:
            if "decision" not in stages:
                for e in scaler.store.events(group=G, kinds=["decision"]):
                    if e.ts >= t0 and "scale_out" in e.message:
                        stages["decision"] = e.ts
                        print(f"[reaction] decision +{(e.ts - t0) * 1000:.0f} ms: {e.message}", file=sys.stderr)
                        break
            while q is not None and not q.empty():
                ev = q.get_nowait()
                if ev.name != r1.name and ev.name.startswith(f"cms-{G}-") and ev.event in ("defined", "started"):
                    new_name = ev.name
                    if ev.event not in stages:
                        stages[ev.event] = ev.at
                        print(f"[reaction] {ev.event} +{(ev.at - t0) * 1000:.0f} ms", file=sys.stderr)
            if new_name and "started" in stages and "health_ok" not in stages:
                d = next((d for d in observer.owned(G) if d.name == new_name), None)
                addr = observer.address_of(d) if d else None
                try:
                    if addr and get(addr[0], addr[1], "/health", timeout=1.0) == 200:
                        stages["health_ok"] = time.time()
                        print(f"[reaction] health_ok +{(stages['health_ok'] - t0) * 1000:.0f} ms", file=sys.stderr)
                except OSError:
                    pass
            while not updates.empty():
                at, u = updates.get()
                if u.event == "ready" and u.replica == new_name and "published" not in stages:
                    stages["published"] = at
                    print(f"[reaction] published +{(at - t0) * 1000:.0f} ms", file=sys.stderr)
                elif u.event == "ready" and new_name is None:
                    updates.put((at, u))
                    break
            time.sleep(0.1)
        order = ["decision", "defined", "started", "health_ok", "published"]
        result.update({f"{k}_ms": round((stages[k] - t0) * 1000) if k in stages else None for k in order})
        result.update({"cost": cost, "threads": args.threads, "high": args.high, "window_s": cfg.groups[G].threshold.window_s,
                       "tick_s": cfg.autoscaler.tick_s, "replica": new_name})
    finally:
        load_stop.set()
        stop.set()
        loop.join(5)
        scaler.close(timeout=2)
        listener.join(2)
        ctx.destroy(0)
        for d in fleet.owned(G):
            fleet.remove(d.host, d.name)
        _drop_pool(fleet, pool)
        fleet.close()
        observer.close()
    print(json.dumps(result))


def _drop_pool(fleet, pool):
    drop_pool(fleet.host("local"), pool)     # the same clean-up the real-stack tests use


if __name__ == "__main__":
    try:
        main()
    except AssertionError as exc:      # a bounded wait ran out (cms.lab.realstack.wait_until)
        raise SystemExit(f"reaction: {exc}") from None
