"""cms on a lab (cms.lab.hosts): the autoscaler, its balancer and the load client, for tests.

``Stack`` runs ``cms.autoscaler.reconcile.Autoscaler`` in a thread of this process, over
the lab's hypervisors (each its own libvirtd in its own namespaces, reached over
qemu+tcp), with the real metrics, health checks and ZeroMQ feed; the load client runs as
the ``cms-loadgen`` process, following that feed. A test can read the daemon's state (its
tracks, its events) and change its balancing settings between steps. ``close`` stops
everything and removes every domain it made, whatever happened (or leaves the replicas for
the next stack to adopt).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cms import config
from cms.lab.hosts import Lab, LabHost
from cms.lab.realstack import stop_process, wait_until
from cms.netutil import free_port


class Stack:
    def __init__(self, lab: Lab, hosts: list[LabHost], workdir: Path, *, group: str, group_cfg: dict[str, Any],
                 cpus: dict[str, int], balancer: dict[str, Any], placement: dict[str, Any] | None = None,
                 libvirt: dict[str, Any] | None = None, autoscaler: dict[str, Any] | None = None,
                 fence: bool = False, more_groups: dict[str, dict[str, Any]] | None = None,
                 host_settings: dict[str, Any] | None = None) -> None:
        self.dir = workdir
        self.group = group
        data = lab.config_data(hosts, fence=fence)
        for h in data["hosts"]:
            h["cpus"] = cpus.get(h["name"], 0)
            h.update(host_settings or {})
        data["libvirt"].update(libvirt or {})
        data.update({
            "state_db": str(workdir / "state.db"),
            "placement": placement or {"algorithm": "first_fit"},
            "network": {"port_min": 21000, "port_max": 21199},
            "groups": {group: group_cfg, **(more_groups or {})},
            "autoscaler": {"tick_s": 1.0, "health_timeout_s": 180, "drain_s": 1.0, "shutdown_timeout_s": 2.0,
                           "metrics_listen": "", **(autoscaler or {})},
            "zmq": {"publish": f"tcp://127.0.0.1:{free_port()}", "snapshot": f"tcp://127.0.0.1:{free_port()}"},
            "balancer": balancer,
        })
        self.cfg = config.parse(data, "<lab stack>")
        (workdir / "cms.toml").write_text(json.dumps(data))   # for the record (JSON: what was parsed)
        self.scaler: Any = None
        self.thread: threading.Thread | None = None
        self.loads: list[subprocess.Popen] = []

    # -- the daemon ----------------------------------------------------------------------------

    def start(self) -> None:
        from cms.autoscaler.reconcile import Autoscaler
        self.scaler = Autoscaler(self.cfg)
        self.thread = threading.Thread(target=self.scaler.run, name="lab-autoscaler", daemon=True)
        self.thread.start()

    def balancer(self, **changes: Any) -> None:
        """Change the balancing settings the running daemon plans with."""
        b = dataclasses.replace(self.scaler.balancer.cfg.balancer, **changes)
        self.scaler.balancer.cfg = dataclasses.replace(self.scaler.balancer.cfg, balancer=b)

    def vertical(self, **changes: Any) -> None:
        """Change the group's vertical scaling settings the running daemon plans with (its
        replicas keep the maximum they were defined with)."""
        cfg = self.scaler.balancer.cfg
        gc = cfg.groups[self.group]
        gc = dataclasses.replace(gc, vertical=dataclasses.replace(gc.vertical, **changes))
        self.scaler.balancer.cfg = dataclasses.replace(cfg, groups={**cfg.groups, self.group: gc})

    def migrate_limits(self, timeout_s: float, bandwidth_mib_s: int = 0) -> None:
        """Change how long the daemon lets a live migration run before it aborts it, and the
        cap on its stream (a low cap makes a migration outlast a short timeout for sure)."""
        sched = self.scaler.scheduler
        sched.cfg = dataclasses.replace(sched.cfg, libvirt=dataclasses.replace(
            sched.cfg.libvirt, migrate_timeout_s=timeout_s, migrate_bandwidth_mib_s=bandwidth_mib_s))

    def ready(self, n: int, timeout: float = 240.0) -> list[Any]:
        def tracks():
            ts = [t for t in self.scaler.registry.snapshot() if str(t.state) == "ready" and t.group == self.group]
            return ts if len(ts) == n else None
        return wait_until(tracks, timeout, 0.5, what=f"{n} ready replica(s) of {self.group}")

    def states(self) -> dict[str, tuple[str, str]]:
        """Replica -> (its lifecycle state, its host), for every replica the daemon tracks."""
        return {t.name: (str(t.state), t.host) for t in self.scaler.registry.snapshot() if t.group == self.group}

    def track(self, name: str) -> Any:
        """A copy of the daemon's record of replica ``name`` (None when it tracks none)."""
        return self.scaler.tracks.get(name)

    def events(self, *kinds: str) -> list[Any]:
        self.scaler.journal.flush()
        return self.scaler.store.events(kinds=kinds or None, limit=10000)

    def wait_event(self, kind: str, timeout: float, subject: str | None = None, after_id: int = 0) -> Any:
        def find():
            for e in self.events(kind):
                if e.id > after_id and (subject is None or e.subject == subject):
                    return e
            return None
        return wait_until(find, timeout, 0.5, what=f"a {kind} event")

    def plan(self) -> Any:
        """What host balancing would do now (`cms balance plan`'s plan), with the daemon's settings."""
        from cms.autoscaler.rebalance import current_plan
        return current_plan(self.scaler.balancer.cfg, self.scaler.scheduler, self.scaler.store)

    def hosts_of(self) -> dict[str, str]:
        """Replica -> the lab host libvirt says it runs on."""
        return {d.name: d.host for d in self.scaler.fleet.owned(self.group) if d.alive}

    # -- the load client -------------------------------------------------------------------

    def loadgen(self, name: str, *args: str) -> subprocess.Popen:
        """cms-loadgen following this stack's feed; its records go to NAME.jsonl / NAME.json."""
        argv = [sys.executable, "-m", "client.loadgen", "--group", self.group, "--zmq-publish", ",".join(self.cfg.zmq.publish),
                "--zmq-snapshot", ",".join(self.cfg.zmq.snapshot), "--wait-ready", "30", "--quiet", "--no-keys",
                "--out", str(self.dir / f"{name}.jsonl"), "--summary", str(self.dir / f"{name}.json"), *args]
        out = open(self.dir / f"{name}.log", "w")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.loads.append(p)
        return p

    def loadgen_result(self, name: str, p: subprocess.Popen, timeout: float = 120.0) -> tuple[dict, list[dict]]:
        """Wait for the run to end by itself; (summary, records)."""
        return run_result(self.dir, name, p, timeout)

    def stop_loadgen(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)   # it drains, then writes its summary
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                stop_process(p)

    # -- the end ------------------------------------------------------------------------------

    def close(self, keep: bool = False) -> None:
        """Stop everything; ``keep``: leave the replicas running for the next stack to adopt
        (tests that share booted replicas), else remove every domain on the lab."""
        for p in self.loads:
            with contextlib.suppress(Exception):
                stop_process(p, grace=5)
        if self.scaler is not None:
            self.scaler.close(timeout=5.0)
            if self.thread is not None:
                self.thread.join(15)
            fleet = self.scaler.fleet
            with contextlib.suppress(Exception):
                for d in [] if keep else fleet.owned():
                    with contextlib.suppress(Exception):
                        fleet.remove(d.host, d.name)
            fleet.close()


def run_result(workdir: Path, name: str, p: subprocess.Popen, timeout: float) -> tuple[dict, list[dict]]:
    """A cms-loadgen run's (summary, records) from NAME.json and NAME.jsonl, once it has exited."""
    rc = p.wait(timeout)
    log = (workdir / f"{name}.log").read_text()[-2000:]
    assert rc == 0, f"cms-loadgen {name} exited {rc}: {log}"
    summary = json.loads((workdir / f"{name}.json").read_text())
    records = [json.loads(line) for line in (workdir / f"{name}.jsonl").read_text().splitlines() if line]
    return summary, records


def throughput(records: list[dict], since: float, until: float) -> float:
    """Completed requests per second over [since, until) (wall clock), from the tick records."""
    ticks = [r for r in records if r.get("type") == "tick" and since <= r["ts"] < until]
    secs = sum(r["interval_s"] for r in ticks)
    return sum(r["completed"] for r in ticks) / secs if secs else 0.0


def failed(records: list[dict], since: float = 0.0, until: float = float("inf")) -> int:
    return sum(r["errors"] for r in records if r.get("type") == "tick" and since <= r["ts"] < until)


def wait_for(pred, timeout: float, what: str):
    return wait_until(pred, timeout, 0.5, what=what)


def now() -> float:
    return time.time()
