"""The demo's figure and summary, built from what the run recorded.

Inputs, all under the demo's output directory:
  state.db               the autoscaler's samples (CPU per replica, as libvirt reported it)
                         and events (decisions, spawns, ready, draining, removed)
  loadgen.jsonl          the client's per-second ticks and its events
  loadgen-summary.json   the client's totals and per-replica first-send times

Outputs: demo.png and summary.json. Kept apart from cms.demo.run so the report can be rebuilt
from a finished run (``python -m cms.demo.report out/``) and tested on recorded data.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from cms import config as cmsconfig
from cms.store import Store


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _mean(xs: list[float]) -> float | None:
    return round(statistics.fmean(xs), 3) if xs else None


def _window(ticks: list[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    sel = [t for t in ticks if t0 <= t["ts"] < t1]
    return {
        "seconds": len(sel),
        "throughput": _mean([t["throughput"] for t in sel]),
        "p50_ms": _mean([t["latency_ms"]["p50"] for t in sel if t["latency_ms"].get("p50") is not None]),
        "p95_ms": _mean([t["latency_ms"]["p95"] for t in sel if t["latency_ms"].get("p95") is not None]),
        "errors": sum(t["errors"] for t in sel),
    }


def analyse(out: Path, group: str) -> dict[str, Any]:
    lines = _read_jsonl(out / "loadgen.jsonl")
    ticks = [d for d in lines if d.get("type") == "tick"]
    lg_events = [d for d in lines if d.get("type") == "event"]
    lg_summary = json.loads((out / "loadgen-summary.json").read_text()) if (out / "loadgen-summary.json").exists() else {}
    store = Store(out / "state.db")
    events = store.events(group=group, limit=100000)
    # the thresholds the run used (its demo.toml), drawn on the CPU plot
    th = None
    if (out / "demo.toml").exists():
        gc = cmsconfig.load(out / "demo.toml").groups.get(group)
        th = (gc.threshold.high, gc.threshold.low) if gc is not None and gc.policy == "threshold" else None
    samples = store.samples(group=group)

    modes = [(e["ts"], e.get("mode")) for e in lg_events if e.get("event") == "mode"]
    high_start = next((ts for ts, m in modes if m == "high"), None)
    high_end = next((ts for ts, m in modes if m == "low" and high_start and ts > high_start), None)
    if high_end is None and ticks:
        high_end = ticks[-1]["ts"]

    by_kind: dict[str, list[Any]] = {}
    for e in events:
        by_kind.setdefault(e.kind, []).append(e)

    def first(kind: str, after: float | None, subject: str | None = None, action: str | None = None) -> Any:
        for e in by_kind.get(kind, []):
            if after is not None and e.ts < after:
                continue
            if subject is not None and e.subject != subject:
                continue
            if action is not None and e.data.get("action") != action:
                continue
            return e
        return None

    # The autoscaler records a group-level "decision" (data.action = scale_out/scale_in),
    # then per replica "added" (defined and started), "ready" (/health answered and the
    # update published), "draining" and "removed".
    scale_out = first("decision", high_start, action="scale_out")
    added = first("added", scale_out.ts) if scale_out is not None else None
    new_replica = added.subject if added is not None else ""
    stages: dict[str, float | None] = {}
    ready_ts = None
    if scale_out is not None and high_start is not None:
        stages["load_step_to_decision_s"] = round(scale_out.ts - high_start, 3)
        ready = first("ready", scale_out.ts, new_replica) if new_replica else None
        if added is not None:
            stages["decision_to_defined_and_started_s"] = round(added.ts - scale_out.ts, 3)
            for k in ("clone_s", "define_s", "start_s", "unpark_s"):
                if added.data.get(k) is not None:
                    stages[f"spawn_{k}"] = added.data[k]
        if ready is not None:
            ready_ts = ready.ts
            stages["started_to_health_ok_and_published_s"] = round(ready.ts - (added.ts if added else scale_out.ts), 3)
            if ready.data.get("boot_s") is not None:
                stages["spawn_boot_to_health_s"] = ready.data["boot_s"]
            stages["decision_to_announced_ready_s"] = round(ready.ts - scale_out.ts, 3)
            if ready.data.get("mode"):
                stages["from_warm_pool"] = ready.data["mode"]
        rep = (lg_summary.get("replicas") or {}).get(new_replica, {})
        if rep.get("announced_ready_at") and ready is not None:
            stages["published_to_client_heard_s"] = round(rep["announced_ready_at"] - ready.ts, 3)
        if rep.get("ready_to_first_send_s") is not None:
            stages["client_heard_to_first_send_s"] = round(rep["ready_to_first_send_s"], 3)
        if rep.get("first_sent_at"):
            stages["load_step_to_first_send_s"] = round(rep["first_sent_at"] - high_start, 3)
        # every replica that decision asked for (one for threshold; the whole step for concurrency)
        asked = max(1, int(scale_out.data.get("desired", 0)) - int(scale_out.data.get("current", 0)))
        came = [e for e in by_kind.get("ready", []) if e.ts >= scale_out.ts][:asked]
        if len(came) == asked:
            stages["decision_to_all_ready_s"] = round(came[-1].ts - scale_out.ts, 3)
            sent = [(lg_summary.get("replicas") or {}).get(e.subject, {}).get("first_sent_at") for e in came]
            if all(sent):
                stages["load_step_to_all_serving_s"] = round(max(sent) - high_start, 3)

    settle = 5.0
    # Before: the high phase while one replica carried it (from the load step, less 3 s
    # for the step itself, to the new replica's ready). After: from 5 s past that ready to
    # the end of the high phase.
    before = _window(ticks, high_start + 3.0, ready_ts) if ready_ts and high_start else {}
    after = _window(ticks, ready_ts + settle, high_end) if ready_ts and high_end else {}
    ratio = None
    if before.get("throughput") and after.get("throughput"):
        ratio = round(after["throughput"] / before["throughput"], 3)
    scale_in = first("decision", high_end, action="scale_in") if high_end else None
    replica_counts = [(t["ts"], t.get("ready", 0)) for t in ticks]
    return {
        "ticks": ticks, "samples": samples, "events": events, "modes": modes, "lg_summary": lg_summary,
        "high_start": high_start, "high_end": high_end, "scale_out": scale_out, "ready_ts": ready_ts,
        "scale_in": scale_in, "before": before, "after": after, "ratio": ratio, "stages": stages,
        "replica_counts": replica_counts, "new_replica": new_replica, "thresholds": th,
    }


def plot(a: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ticks = a["ticks"]
    t0 = min([t["ts"] for t in ticks] + [s.ts for s in a["samples"]] or [0.0])
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    ax_cpu, ax_tp, ax_lat, ax_n = axes

    by_dom: dict[str, list[Any]] = {}
    for s in a["samples"]:
        if s.cpu is not None:
            # a warm replica's boot (and its parking) drawn apart: the CPU a refill takes
            warm = s.state in ("warming", "parking", "parked")
            by_dom.setdefault(s.domain + (" (warm pool)" if warm else ""), []).append(s)
    for dom, ss in sorted(by_dom.items()):
        ax_cpu.plot([s.ts - t0 for s in ss], [100 * s.cpu for s in ss], label=dom, lw=1.2,
                    ls="--" if dom.endswith("(warm pool)") else "-")
    if a.get("thresholds"):
        high, low = a["thresholds"]
        ax_cpu.axhline(100 * high, color="red", ls=":", lw=1, label=f"scale-out threshold ({high:.0%})")
        ax_cpu.axhline(100 * low, color="green", ls=":", lw=1, label=f"scale-in threshold ({low:.0%})")
    ax_cpu.set_ylabel("CPU % (libvirt)")
    ax_cpu.legend(loc="upper left", fontsize=8)

    xs = [t["ts"] - t0 for t in ticks]
    ax_tp.plot(xs, [t["throughput"] for t in ticks], label="completed/s", color="tab:blue")
    ax_tp.plot(xs, [t["target_rate"] for t in ticks], label="offered (target rate)", color="grey", ls="--")
    ax_tp.set_ylabel("requests/s")
    ax_tp.legend(loc="upper left", fontsize=8)

    ax_lat.plot(xs, [t["latency_ms"].get("p50") or float("nan") for t in ticks], label="p50")
    ax_lat.plot(xs, [t["latency_ms"].get("p95") or float("nan") for t in ticks], label="p95")
    ax_lat.set_ylabel("latency ms")
    ax_lat.set_yscale("log")
    ax_lat.legend(loc="upper left", fontsize=8)

    ax_n.step(xs, [t.get("ready", 0) for t in ticks], where="post", color="black")
    ax_n.set_ylabel("ready replicas")
    ax_n.set_ylim(0, max([t.get("ready", 0) for t in ticks] + [2]) + 0.5)
    ax_n.set_xlabel("seconds")

    marks = []
    for ts, mode in a["modes"]:
        marks.append((ts, f"load {mode}", "grey"))
    for e in a["events"]:
        if e.kind == "decision":
            action = e.data.get("action", "")
            marks.append((e.ts, f"{action} -> {e.data.get('desired', '?')}",
                          {"scale_out": "red", "scale_in": "green"}.get(action, "black")))
        elif e.kind in ("ready", "draining", "removed", "failed"):
            marks.append((e.ts, f"{e.kind} {e.subject.rsplit('-', 1)[-1]}", "purple" if e.kind == "failed" else "tab:orange"))
        elif e.kind in ("warm_prepared", "warm_used", "warm_parked", "warm_refill", "warm_empty"):
            marks.append((e.ts, f"{e.kind} {e.subject.rsplit('-', 1)[-1]}", "tab:cyan"))
    for ax in axes:
        for ts, _label, color in marks:
            ax.axvline(ts - t0, color=color, lw=0.8, alpha=0.6)
    for i, (ts, label, color) in enumerate(sorted(marks)):
        ax_cpu.annotate(label, (ts - t0, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                        va="top", ha="right", color=color, xytext=(-2, -2 - 0 * i), textcoords="offset points")
    ratio = a["ratio"]
    warm = a.get("warm_state") or ""
    fig.suptitle("cms autoscaling demo: 1 -> 2 replicas under load" + (f", from a {warm} warm pool" if warm else "")
                 + (f" (throughput after/before = {ratio:.2f})" if ratio else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def spawn_stages(events: list[Any]) -> list[dict[str, Any]]:
    """Each replica the autoscaler added: clone, define and start times (its "added" event)
    and boot to /health (its "ready" event), in seconds."""
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.kind == "added" and "define_s" in e.data:
            out[e.subject] = {"replica": e.subject, **{k: e.data.get(k) for k in ("clone_s", "define_s", "start_s")}}
        elif e.kind == "ready" and e.subject in out and e.data.get("boot_s") is not None:
            out[e.subject]["boot_s"] = e.data["boot_s"]
    return list(out.values())


def warm_pool_summary(events: list[Any]) -> dict[str, Any]:
    """What the warm pool did: each replica prepared (its boot and the CPU it took from the
    serving replicas), each one taken into service and how fast, each one parked back."""
    def pick(kind: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
        return [{"replica": e.subject, **{k: e.data.get(k) for k in keys}} for e in events if e.kind == kind]
    return {"prepared": pick("warm_prepared", ("mode", "boot_s", "park_s", "cpu_s", "host_share")),
            "used": pick("warm_used", ("mode", "seconds")),
            "parked_back": pick("warm_parked", ("mode", "park_s")),
            "cold_because_empty": [e.subject for e in events if e.kind == "warm_empty"]}


def build_report(out: Path, group: str, **params: Any) -> dict[str, Any]:
    a = analyse(out, group)
    a["warm_state"] = params.get("warm_state", "")
    lg = a["lg_summary"]
    summary = {
        "headline": {
            "scaled_out": a["scale_out"] is not None,
            "scaled_in": a["scale_in"] is not None,
            "scale_outs": sum(1 for e in a["events"] if e.kind == "decision" and e.data.get("action") == "scale_out"),
            "peak_replicas": max((n for _ts, n in a["replica_counts"]), default=0),
            "throughput_before": a["before"].get("throughput"),
            "throughput_after": a["after"].get("throughput"),
            "after_before_ratio": a["ratio"],
            "reaction_s": a["stages"].get("load_step_to_first_send_s"),
            "policy": params.get("policy", "threshold"),
            # the first scale-out decision -> every replica it asked for ready, and the load
            # step -> each of them serving: the two policies' runs side by side
            "decision_to_ready_s": a["stages"].get("decision_to_all_ready_s"),
            "step_to_serving_s": a["stages"].get("load_step_to_all_serving_s"),
        },
        "params": params,
        "before_scale_out": a["before"],
        "after_scale_out": a["after"],
        "reaction": a["stages"],
        "spawns": spawn_stages(a["events"]),
        "warm_pool": warm_pool_summary(a["events"]) if params.get("warm_pool") else None,
        "new_replica": a["new_replica"],
        "requests": {k: lg.get(k) for k in ("sent", "completed", "errors", "outstanding", "accounted", "retries")},
        "decisions": [{"ts": e.ts, "action": e.data.get("action"), "message": e.message}
                      for e in a["events"] if e.kind == "decision"],
        "events": [{"ts": e.ts, "kind": e.kind, "subject": e.subject, "message": e.message} for e in a["events"]
                   if e.kind != "decision"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(a, out / "demo.png")
    return summary


if __name__ == "__main__":
    d = Path(sys.argv[1] if len(sys.argv) > 1 else "out")
    print(json.dumps(build_report(d, sys.argv[2] if len(sys.argv) > 2 else "demo")["headline"]))
