"""A load step on the real stack, for tests and benchmarks: one replica's capacity, then
cms-loadgen open-loop at a multiple of it, following the daemon's feed, and what the step did.

``capacity`` measures requests/s one replica answers at a cost with the load client's
connections per replica; ``start_loadgen`` runs cms-loadgen low then high (the step) against
a feed; ``what_the_step_did`` reads the daemon's events and the client's per-second records:
from the step to the first scale-out decision, to ``need`` replicas ready, the seconds whose
p95 was above a bound, and when p95 was back under it for good; ``idle`` waits for a
replica to be quiet before its capacity is measured.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

CONNS = 4          # connections the load client keeps per replica, as cms-demo's


def capacity(address: str, port: int, cost: int, conns: int = CONNS, seconds: float = 3.0, skip: float = 0.5) -> float:
    """Requests/s one replica answers at ``cost`` with ``conns`` concurrent requests over
    ``seconds`` (answers in the first ``skip`` seconds, connections warming up, and after the
    end are left out)."""
    done: list[float] = []
    t0 = time.monotonic()
    stop = t0 + seconds

    def worker() -> None:
        c = http.client.HTTPConnection(address, port, timeout=30)
        try:
            while time.monotonic() < stop:
                c.request("GET", f"/work?payload=capacity&cost={cost}")
                r = c.getresponse()
                r.read()
                if r.status == 200:
                    done.append(time.monotonic())
        finally:
            c.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return sum(1 for t in done if t0 + skip < t <= stop) / (seconds - skip)


def start_loadgen(publish: str, snapshot: str, group: str, out: Path, *, low: float, high: float, low_s: float,
                  high_s: float, cost: int, conns: int = CONNS) -> subprocess.Popen:
    """cms-loadgen, open loop: ``low`` req/s for ``low_s``, then ``high`` for ``high_s``."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "cms-loadgen"), "--group", group, "--zmq-publish", publish,
         "--zmq-snapshot", snapshot, "--schedule", f"low:{low_s:g}s,high:{high_s:g}s",
         "--low-rate", f"{low:.2f}", "--high-rate", f"{high:.2f}", "--cost", str(cost), "--balance", "least",
         "--max-conns", str(conns), "--timeout", "30", "--out", str(out), "--quiet", "--no-keys", "--wait-ready", "30"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def read_records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in out.read_text().splitlines() if x.strip()]


def what_the_step_did(events: Iterable[Any], records: list[dict[str, Any]], *, ready_before: int, need: int,
                      bound_s: float = 1.0) -> dict[str, Any]:
    """The step (the client's switch to high) against the daemon's events and the client's ticks."""
    step = next(e["ts"] for e in records if e.get("type") == "event" and e.get("event") == "mode"
                and e.get("mode") == "high")
    after = [e for e in events if e.ts >= step]
    outs = [e for e in after if e.kind == "decision" and e.data.get("action") == "scale_out"]
    ready, enough = ready_before, None
    for e in after:
        if e.kind == "ready":
            ready += 1
            if ready >= need and enough is None:
                enough = e.ts
        elif e.kind in ("draining", "failed"):
            ready -= 1
    ticks = [t for t in records if t.get("type") == "tick" and t["ts"] > step]
    over = [t["ts"] for t in ticks if (t["latency_ms"].get("p95") or 0) > bound_s * 1000]
    unparks = sorted(e.ts for e in after if e.kind == "warm_used")
    return {"step_ts": step,
            "step_to_decision_s": round(outs[0].ts - step, 3) if outs else None,
            "step_to_enough_ready_s": round(enough - step, 3) if enough else None,
            "largest_step": max((int(e.data.get("desired", 0)) - int(e.data.get("current", 0)) for e in outs), default=0),
            "decisions": [e.message for e in outs],
            "unparked": len(unparks), "unpark_spread_s": round(unparks[-1] - unparks[0], 3) if unparks else None,
            f"p95_over_{bound_s:g}s_s": len(over),
            "p95_back_under_s": round(max(over) - step, 3) if over else 0.0}


def idle(scaler: Any, group: str, name: str, ticks: int = 3, below: float = 0.25) -> Callable[[], bool]:
    """A condition on an Autoscaler's status: replica ``name`` is past its warm-up and its CPU
    has been below ``below`` for the last ``ticks`` ticks (a freshly booted TCG guest burns
    CPU for a while; a capacity measured then is a fraction of the real one)."""
    seen: dict[int, float | None] = {}

    def pred() -> bool:
        st = scaler.status()
        rep = next((r for r in st["groups"][group]["replicas"] if r["name"] == name), None)
        if rep is None or rep["ready_at"] is None:
            return False
        seen[st["tick"]["seq"]] = rep["cpu"]
        last = [seen[k] for k in sorted(seen)[-ticks:]]
        warm = st["ts"] < rep["ready_at"] + scaler.cfg.groups[group].warmup_s
        return not warm and len(last) == ticks and all(c is not None and c < below for c in last)
    return pred

