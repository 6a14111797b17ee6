"""``cms-demo --scenario balance``, the host-balancing scenario: a replica live-migrates while it serves.

In order it:
 1. makes a lab of two hypervisors on this machine (cms.lab.hosts: hv1 and hv2, each its
    own libvirtd in its own network and mount namespace, at 169.254.96.11 and .12, storage
    shared, each counted as 2 CPUs);
 2. starts ``cms-autoscaler`` on them with a group of two replicas, placed first fit, so
    both land on hv1, and host balancing on (relief above 80 % for 10 s);
 3. once the guests have finished booting, drives ``cms-loadgen`` closed loop: one request
    at a time first (hv1 near 50 %), then four at a time (both replicas busy, hv1 near
    100 %): the load piles onto hv1;
 4. the balancer live-migrates one replica to hv2 while it serves; its new address is
    announced at the switch-over and the client follows it;
 5. stops everything, removes the lab (also on Ctrl-C), and writes out/balance.png (both
    hosts' CPU, the client's throughput and its errors, the migration marked) and
    out/balance-summary.json (requests, failures, the move and its timings, throughput
    before and after).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cms import config as cmsconfig
from cms.demo.common import GROUP, run_to_end, say, start, wait_ready
from cms.errors import CmsError
from cms.netutil import free_port

LAB, SUBNET = "cmsdemo", 96
SCHEDULE = "low:25s,high:95s"
COST = 20000


def settings(out: Path) -> dict[str, Any]:
    return {
        "state_db": str(out / "state.db"),
        "placement": {"algorithm": "first_fit"},
        "network": {"port_min": 21300, "port_max": 21399},
        "groups": {GROUP: {"min": 2, "max": 2, "vcpus": 1, "memory_mib": 512, "warmup_s": 0.0, "cooldown_s": 3600.0}},
        "autoscaler": {"tick_s": 1.0, "drain_s": 1.0, "shutdown_timeout_s": 3.0, "metrics_listen": ""},
        "zmq": {"publish": f"tcp://127.0.0.1:{free_port()}", "snapshot": f"tcp://127.0.0.1:{free_port()}"},
        "balancer": {"enabled": True, "high": 0.8, "window_s": 10.0, "vm_cooldown_s": 120.0, "min_stay_s": 600.0,
                     "max_moves": 2, "budget_interval_s": 300.0},
    }


def run_balance(out: Path, golden: str) -> dict[str, Any]:
    from cms.lab.hosts import Lab
    from cms.lab.realstack import stop_process
    out.mkdir(parents=True, exist_ok=True)
    for f in ("state.db", "state.db-wal", "state.db-shm", "balance-loadgen.jsonl", "balance.png"):
        (out / f).unlink(missing_ok=True)
    if not Path(golden).exists():
        raise CmsError(f"golden image {golden} not found: build it with `make image`")
    lab = Lab(LAB, SUBNET, golden=golden)
    procs: list[subprocess.Popen] = []
    try:
        hosts = lab.up(2)
        say(f"lab up: {', '.join(f'{h.name} at {h.address} (libvirtd pid {h.pid})' for h in hosts)}")
        toml = out / "balance.toml"
        toml.write_text("# written by cms-demo --scenario balance\n" + cmsconfig.to_toml(settings(out)) + "\n"
                        + lab.config_fragment(hosts, cpus=2))
        cfg = cmsconfig.load(toml)
        env = {"CMS_CONFIG": str(toml), "CMS_RUN_DIR": str(out / "run"), "PYTHONUNBUFFERED": "1"}
        bin_dir = Path(sys.executable).parent

        def launch(name: str, argv: list[str]) -> subprocess.Popen:
            procs.append(start(out / f"balance-{name}.log", argv, env))
            return procs[-1]

        launch("autoscaler", [str(bin_dir / "cms-autoscaler"), "--config", str(toml)])
        say("waiting for both replicas on hv1 (first fit) to answer /health")
        ready = wait_ready(cfg, 2, 240)
        say("ready: " + ", ".join(f"{r.name} on {r.host} at {r.endpoint}" for r in ready))
        from cms.store import Store
        store = Store.of(cfg)
        say("letting the guests finish booting (a booting guest is busy whatever the load): hv1 below 40 %")
        settle(store, "hv1", 0.4, 120)
        say(f"load {SCHEDULE}: closed loop, 1 request outstanding, then 4 (both replicas busy: hv1 near 100 %)")
        lg = launch("loadgen", [str(bin_dir / "cms-loadgen"), "--config", str(toml), "--group", GROUP,
                               "--schedule", SCHEDULE, "--concurrency", "1,4", "--cost", str(COST), "--timeout", "30",
                               "--out", str(out / "balance-loadgen.jsonl"), "--summary",
                               str(out / "balance-loadgen-summary.json"), "--quiet", "--no-keys", "--wait-ready", "30"])
        told = set()
        deadline = time.monotonic() + 240
        while lg.poll() is None:
            if time.monotonic() > deadline:
                raise CmsError("the load client ran past its schedule; stopping")
            for e in store.events(kinds=("balance_migrate", "migrated", "migrate_failed")):
                if e.id not in told:
                    told.add(e.id)
                    say(f"{e.kind} {e.subject}: {e.message}")
            time.sleep(1.0)
        if lg.returncode != 0:
            raise CmsError(f"cms-loadgen exited with {lg.returncode}; see {out / 'balance-loadgen.log'}")
        say("load finished; stopping the autoscaler")
        for p in procs:
            stop_process(p, grace=10)
        summary = report(out, store)
        say(f"wrote {out / 'balance.png'} and {out / 'balance-summary.json'}")
        return summary
    finally:
        for p in procs:
            if p.poll() is None:
                stop_process(p, grace=10)
        removed = lab.down()
        say(f"lab removed ({len(removed)} things: namespaces, links, processes, {lab.root})")


def settle(store: Any, host: str, below: float, timeout: float) -> None:
    """Until the host's load has stayed below `below` for 5 s (its guests done booting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [r.cpu for r in store.host_samples(host=host, since=time.time() - 5) if r.cpu is not None]
        if len(rows) >= 4 and max(rows) < below:
            return
        time.sleep(1.0)
    raise CmsError(f"{host} stayed busy for {timeout:g}s after its replicas were ready; see the autoscaler's log")


def report(out: Path, store: Any) -> dict[str, Any]:
    lines = [json.loads(x) for x in (out / "balance-loadgen.jsonl").read_text().splitlines() if x.strip()]
    ticks = [d for d in lines if d.get("type") == "tick"]
    lg = json.loads((out / "balance-loadgen-summary.json").read_text())
    host_rows = store.host_samples()
    started = store.events(kinds=["balance_migrate"])
    moved = store.events(kinds=["migrated"])
    failed = store.events(kinds=["migrate_failed"])
    t0 = ticks[0]["ts"] if ticks else (host_rows[0].ts if host_rows else time.time())

    def rate(a: float, b: float) -> float | None:
        sel = [t for t in ticks if a <= t["ts"] < b]
        secs = sum(t["interval_s"] for t in sel)
        return round(sum(t["completed"] for t in sel) / secs, 2) if secs else None

    move = moved[0] if moved else None
    summary = {
        "requests": lg["sent"], "completed": lg["completed"], "failed": lg["errors"],
        "errors_by_kind": lg["errors_by_kind"], "retries": lg["retries"],
        "move": None if move is None else {
            "replica": move.subject, "from": move.data["from"], "to": move.data["to"], "took_s": move.data["took_s"],
            "switchover_s": move.data.get("switchover_s"), "reason": started[0].message if started else "",
            "at_s": round(move.ts - t0, 1),
            "throughput_before": rate(move.ts - move.data["took_s"] - 20, move.ts - move.data["took_s"]),
            "throughput_after": rate(move.ts + 2, move.ts + 22)},
        "failed_migrations": [e.message for e in failed],
    }
    (out / "balance-summary.json").write_text(json.dumps(summary, indent=1))
    plot(out / "balance.png", t0, ticks, host_rows, started, moved)
    return summary


def plot(path: Path, t0: float, ticks: list[dict], host_rows: list[Any], started: list[Any], moved: list[Any]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for h in sorted({r.host for r in host_rows}):
        pts = [(r.ts - t0, r.cpu * 100) for r in host_rows if r.host == h and r.cpu is not None]
        ax[0].plot([p[0] for p in pts], [p[1] for p in pts], label=f"{h}: its VMs' CPU / its CPUs")
    ax[0].axhline(80, ls=":", c="gray", label="balancer high (80 %)")
    ax[0].set_ylabel("host CPU %")
    ax[0].legend(loc="upper left", fontsize=8)
    xs = [t["ts"] - t0 for t in ticks]
    ax[1].plot(xs, [t["throughput"] for t in ticks], c="tab:green")
    ax[1].set_ylabel("client req/s")
    ax[2].bar(xs, [t["errors"] for t in ticks], color="tab:red", width=1.0)
    ax[2].set_ylabel("failed requests")
    ax[2].set_ylim(0, max([1] + [t["errors"] for t in ticks]) + 1)
    ax[2].set_xlabel("seconds")
    for s, m in zip(started, moved):
        for a in ax:
            a.axvspan(s.ts - t0, m.ts - t0, color="tab:orange", alpha=0.25)
        ax[0].annotate(f"{m.subject} {m.data['from']} -> {m.data['to']} ({m.data['took_s']:.1f} s)",
                       (s.ts - t0, 5), fontsize=8)
    fig.suptitle("cms host balancing: a replica live-migrates from hv1 to hv2 while serving")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out: Path, golden: str) -> int:
    return run_to_end(lambda: run_balance(out, golden), lambda summary: summary)
