"""The replay's outputs: one JSON document and one plot, every setting side by side.

Per setting: the replicas over time, each decision with its explanation, the seconds the
model's p95 latency spent over the bound and the seconds the ready replicas' mean CPU spent
above ``high``, the replica-seconds (running, and parked in the warm pool: the cost), and
the scale actions. A recorded input adds what really happened and, per setting, how far the
replay is from it: each real decision's distance in ticks to the replayed decision of the
same kind nearest to it, and the share of ticks where the replayed ready count equals the
real one.

The series in the document are downsampled to at most MAX_POINTS (a bucket's counts and
latencies by their highest value, CPU, in-flight and load by their mean); the summaries
are computed from every tick.
"""

from __future__ import annotations

import bisect
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from cms.replay.inputs import Recorded
from cms.replay.sim import Run

MAX_POINTS = 4000


def summary(run: Run, dt: float, bound_s: float, high: float) -> dict[str, Any]:
    over = sum(dt for p in run.p95_s if p is not None and p > bound_s)
    hot = sum(dt for c in run.cpu if c is not None and c > high)
    outs = sum(1 for d in run.decisions if d["action"] == "scale_out")
    return {
        "ticks": len(run.t),
        "seconds_over_latency_bound": round(over, 3), "latency_bound_s": bound_s,
        "seconds_cpu_above_high": round(hot, 3), "high": high,
        "replica_seconds": round(sum(run.running) * dt, 1),
        "parked_replica_seconds": round(sum(run.parked) * dt, 1),
        "peak_serving": max(run.serving, default=0),
        "scale_outs": outs, "scale_ins": sum(1 for d in run.decisions if d["action"] == "scale_in"),
        "largest_step": max((abs(d["desired"] - d["from"]) for d in run.decisions), default=0),
        "actions": dict(sorted(run.actions.items())),
        "recorded_cpu_share": round(run.recorded_ticks / len(run.t), 4) if run.t else 0.0,
        "recorded_starts": run.recorded_starts,
        "notes": run.notes[:20],
    }


def _bucket(xs: Sequence[Any], step: int, how: Callable[[list[Any]], Any]) -> list[Any]:
    out = []
    for i in range(0, len(xs), step):
        vals = [x for x in xs[i:i + step] if x is not None]
        out.append(None if not vals else _finite(how(vals)))
    return out


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else ("inf" if math.isinf(v) else round(v, 4))
    return v


def series(run: Run) -> dict[str, list[Any]]:
    step = max(1, math.ceil(len(run.t) / MAX_POINTS))
    last = lambda v: v[-1]  # noqa: E731
    return {"step_ticks": step,  # type: ignore[dict-item]
            "t": _bucket(run.t, step, last), "offered_rps": _bucket(run.offered, step, statistics.fmean),
            "serving": _bucket(run.serving, step, max), "ready": _bucket(run.ready, step, max),
            "parked": _bucket(run.parked, step, max), "cpu": _bucket(run.cpu, step, statistics.fmean),
            "in_flight": _bucket(run.in_flight, step, statistics.fmean), "p95_s": _bucket(run.p95_s, step, max)}


def compare(run: Run, rec: Recorded) -> dict[str, Any]:
    """How far the replay is from what really happened."""
    errors = []
    for d in rec.decisions:
        if d["action"] in (None, "none"):
            continue
        same = [s["t"] for s in run.decisions if s["action"] == d["action"]]
        near = min(same, key=lambda t: abs(t - d["t"]), default=None)
        errors.append({"real_t": round(d["t"], 3), "action": d["action"],
                       "replayed_t": near, "ticks_off": None if near is None else round(abs(near - d["t"]) / rec.tick_s, 2)})
    match = 0
    for t, n in zip(run.t, run.ready):
        i = bisect.bisect_right(rec.ticks, t + 1e-6) - 1
        match += i >= 0 and rec.ready[i] == n
    offs = [e["ticks_off"] for e in errors]
    return {"decisions": errors, "replayed_decisions": len([d for d in run.decisions if d["action"] != "none"]),
            "real_decisions": len(errors),
            "max_ticks_off": None if not offs or None in offs else max(offs),
            "ready_count_match_share": round(match / len(run.t), 4) if run.t else None}


def reality(rec: Recorded) -> dict[str, Any]:
    step = max(1, math.ceil(len(rec.ticks) / MAX_POINTS))
    return {"decisions": [{**d, "t": round(d["t"], 3)} for d in rec.decisions],
            "series": {"step_ticks": step, "t": _bucket(rec.ticks, step, lambda v: round(v[-1], 3)),
                       "ready": _bucket(rec.ready, step, max), "cpu": _bucket(rec.cpu, step, statistics.fmean)}}


def plot(doc: dict[str, Any], runs: dict[str, Run], rec: Recorded | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_load, ax_n, ax_lat, ax_cpu) = plt.subplots(4, 1, figsize=(12, 11), sharex=True)
    first = next(iter(runs.values()))
    ax_load.plot(first.t, first.offered, color="grey", lw=1)
    ax_load.set_ylabel("offered requests/s")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if rec is not None:
        ax_n.step(rec.ticks, rec.ready, where="post", color="black", lw=2.5, alpha=0.35, label="recorded: ready")
    for (name, run), color in zip(runs.items(), colors):
        s = doc["settings"][name]["summary"]
        label = (f"{name}: {s['replica_seconds']:.0f} replica-s, {s['seconds_over_latency_bound']:.0f} s over "
                 f"{s['latency_bound_s']:g} s, {s['scale_outs']} out / {s['scale_ins']} in")
        ax_n.step(run.t, run.serving, where="post", color=color, lw=1.4, label=label)
        ax_n.step(run.t, run.ready, where="post", color=color, lw=0.8, ls=":")
        for d in run.decisions:
            ax_n.plot([d["t"]], [d["desired"]], marker="^" if d["action"] == "scale_out" else "v", color=color, ms=6)
        ax_lat.plot(run.t, [math.nan if p is None or math.isinf(p) else p for p in run.p95_s], color=color, lw=1)
        ax_cpu.plot(run.t, [math.nan if c is None else 100 * c for c in run.cpu], color=color, lw=1)
    bound = doc["latency_bound_s"]
    ax_lat.axhline(bound, color="red", ls=":", lw=1)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("p95 latency s\n(recorded where the group is the recorded one, else model)", fontsize=8)
    ax_n.set_ylabel("replicas (serving; dotted: ready)")
    ax_n.legend(loc="upper left", fontsize=8)
    ax_cpu.set_ylabel("mean CPU % of ready\n(recorded, else model)", fontsize=8)
    ax_cpu.set_xlabel("seconds")
    fig.suptitle(f"cms replay of {doc['input']['source']}: {len(runs)} setting(s) side by side")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
