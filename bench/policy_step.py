"""A load step of 3 x one replica's capacity: how fast each policy gets enough replicas serving.

For each case, in one run on this machine, the autoscaler runs in this process (group min 1,
max 4, the demo's threshold settings, tick 1 s) on its own pool, and cms-loadgen follows
its feed:
  threshold, cold     the demo's policy, every new replica booted
  threshold, warm     the same with a paused warm pool of 3
  (and, where cms.policy has it, concurrency cold and warm, with its defaults)
Each case: one replica ready (and the pool parked), its capacity C1 measured over one
connection (a CPU-bound 1-vCPU replica serves as much one request at a time; more would
put requests in flight and the concurrency policy would rightly scale out on the
measurement), then open-loop load at low 0.2 x C1 for LOW_S and 3 x C1 for STEP_S. From
the step it reports:
  step_to_decision_s      the first scale-out decision (the daemon's event)
  step_to_enough_ready_s  3 replicas ready (what 3 x C1 needs), from the daemon's events
  p95_over_1s_s           seconds (client ticks) whose p95 latency was above 1 s, from the step
  largest_step            the most replicas one decision added
Target (issue 24): concurrency with a warm pool, step -> enough ready <= panic_window_s + 1 s.
Prints ONE JSON line; progress on stderr.

    .venv/bin/python bench/policy_step.py [--cases threshold-cold,threshold-warm,...] [--step-s 90]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cms import config, policy  # noqa: E402
from cms.autoscaler.lifecycle import State  # noqa: E402
from cms.autoscaler.publisher import Publisher  # noqa: E402
from cms.autoscaler.reconcile import Autoscaler  # noqa: E402
from cms.lab.loadstep import capacity, idle, read_records, start_loadgen, what_the_step_did  # noqa: E402
from cms.lab.realstack import GOLDEN, drop_pool, real_config, wait_until  # noqa: E402
from cms.virt import Fleet  # noqa: E402

G = "bstep"
COST = 20000
LOW_S, STEP_FACTOR, NEED = 20.0, 3.0, 3
THRESHOLD = {"high": 0.9, "low": 0.25, "window_s": 6.0, "window_in_s": 600.0}
POLICIES = {"threshold": {"policy": "threshold", "threshold": THRESHOLD, "cooldown_s": 10.0, "warmup_s": 15.0},
            "concurrency": {"policy": "concurrency", "cooldown_s": 10.0}}
CASES = [f"{p}-{w}" for p in POLICIES for w in ("cold", "warm")]


def say(msg: str) -> None:
    print(f"[policy_step {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def case(tmp: Path, name: str, step_s: float) -> dict[str, object]:
    pol, pool = name.split("-")
    warm = {"size": 3, "state": "paused"} if pool == "warm" else {"size": 0}
    pool_name = f"cmsbench-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(dir=tmp))
    cfg = real_config(work, pool=pool_name,
                      groups={G: {"min": 1, "max": 4, "memory_mib": 384, **POLICIES[pol], "warm_pool": warm}},
                      autoscaler={"tick_s": 1.0, "health_timeout_s": 240, "health_failures": 5, "drain_s": 0.5},
                      zmq={"publish": "tcp://127.0.0.1:*", "snapshot": "tcp://127.0.0.1:*"})
    fleet = Fleet(cfg, events=True)
    stop = threading.Event()
    s = Autoscaler(cfg, fleet=fleet, publisher=Publisher(cfg.zmq), stop=stop, groups=[G])
    runner = threading.Thread(target=s.run, daemon=True)
    runner.start()
    lg = None
    try:
        def settled() -> bool:
            tracks = s.registry.snapshot()
            return (sum(t.state == State.READY for t in tracks) == 1
                    and sum(t.state == State.PARKED for t in tracks) == warm["size"]
                    and all(t.state in (State.READY, State.PARKED) for t in tracks))
        wait_until(settled, 400, 0.5, f"{name}: one ready replica" + (" and 3 parked" if warm["size"] else ""))
        r1 = next(t for t in s.registry.snapshot() if t.state == State.READY)
        wait_until(idle(s, G, r1.name), 240, 0.25, f"{name}: {r1.name} idle for three ticks")
        c1 = capacity(r1.address, r1.port, COST, conns=1)
        say(f"{name}: one replica answers {c1:.1f} req/s at cost {COST}; step to {STEP_FACTOR * c1:.1f} req/s")
        mark = max((e.id for e in s.store.events(limit=100000)), default=0)
        out = work / "loadgen.jsonl"
        lg = start_loadgen(s.publisher.publish_endpoint, s.publisher.snapshot_endpoint, G, out, low=0.2 * c1,
                           high=STEP_FACTOR * c1, low_s=LOW_S, high_s=step_s, cost=COST)
        lg.wait(timeout=LOW_S + step_s + 120)
        did = what_the_step_did(s.store.events(since_id=mark, group=G, limit=100000), read_records(out),
                                ready_before=1, need=NEED)
        return {"capacity_rps": round(c1, 2), **{k: v for k, v in did.items() if k not in ("step_ts", "decisions")}}
    finally:
        if lg is not None and lg.poll() is None:
            lg.kill()
            lg.wait(10)
        stop.set()
        runner.join(15)
        s.close(timeout=5)
        for d in fleet.owned(G):
            fleet.remove(d.host, d.name)
        drop_pool(fleet.host("local"), pool_name)
        fleet.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=",".join(c for c in CASES if c.split("-")[0] in policy.POLICIES))
    ap.add_argument("--step-s", type=float, default=90.0, help="seconds of the 3 x load (default 90)")
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in cases if c not in CASES or c.split("-")[0] not in policy.POLICIES]
    if bad:
        raise SystemExit(f"policy_step: unknown case {bad[0]!r}; known: "
                         f"{', '.join(c for c in CASES if c.split('-')[0] in policy.POLICIES)}")
    if not GOLDEN.exists():
        raise SystemExit(f"policy_step: golden image {GOLDEN} missing: run `make image` first")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("CMS_RUN_DIR", tempfile.mkdtemp(prefix="cms-bench-"))
    tmp = Path(tempfile.mkdtemp(prefix="cms-policy-step-"))
    result: dict[str, object] = {"bench": "policy_step", "step_factor": STEP_FACTOR, "need_ready": NEED}
    for c in cases:
        result[c.replace("-", "_")] = case(tmp, c, args.step_s)
        say(f"{c}: {result[c.replace('-', '_')]}")
    warm = result.get("concurrency_warm")
    if isinstance(warm, dict):
        bound = config.ConcurrencyPolicyConfig().panic_window_s + 1.0
        took = warm.get("step_to_enough_ready_s")
        result["target"] = {"concurrency_warm_step_to_enough_ready_max_s": bound,
                            "met": took is not None and took <= bound}
    result["host_cpus"] = os.cpu_count()    # 3 x one replica's capacity needs 3 CPUs to be served at all
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as exc:      # a bounded wait ran out (cms.lab.realstack.wait_until)
        raise SystemExit(f"policy_step: {exc}") from None
