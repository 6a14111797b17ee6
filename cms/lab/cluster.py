"""Several cms controllers on a lab, for the takeover tests and bench/takeover.py.

A lab (cms.lab.hosts) of hypervisors, M controllers each in its own network namespace and
an etcd cluster they alone reach (cms.lab.controllers); on each controller a real
``cms-autoscaler`` process, started, SIGKILLed or restarted by the test, and, when asked
(``start_api``), a real ``cms-api`` (gunicorn, 2 sync workers, on the controller's address
port 8080, with the token ``API_TOKEN``); one state database they all share (the takeover
test's is PostgreSQL on the hosts' bridge, cms.lab.postgres); the real load client
(``cms-loadgen``) in the root namespace, following the feed of every controller.
``leader()`` asks every controller's /health; ``api(i)`` is the CLI's client of controller
i's API. ``close`` ends every process it started and removes every domain of its group,
whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from cms.cli import Client, Failure
from cms.config import to_toml
from cms.lab.controllers import Controllers, LabController
from cms.lab.etcd import EtcdCluster
from cms.lab.hosts import Lab, LabHost
from cms.lab.realstack import stop_process, wait_until
from cms.lab.stack import run_result

API_TOKEN = "lab-token"      # api.token of every controller's cms-api (mutating /v1 calls)


class Cluster:
    def __init__(self, lab: Lab, hosts: list[LabHost], ctl: Controllers, controllers: list[LabController],
                 etcd: EtcdCluster, workdir: Path, *, group: str, group_cfg: dict[str, Any], state_db: str,
                 ttl: int = 5, tick_s: float = 1.0) -> None:
        self.lab, self.hosts, self.ctl, self.controllers, self.etcd = lab, hosts, ctl, controllers, etcd
        self.dir, self.group, self.ttl, self.tick_s = workdir, group, ttl, tick_s
        self.procs: dict[int, subprocess.Popen] = {}
        self.apis: dict[int, subprocess.Popen] = {}
        self.loads: list[subprocess.Popen] = []
        self.configs: dict[int, Path] = {}
        for i in range(1, len(controllers) + 1):
            data = lab.config_data(hosts)
            data.update(ctl.config_data(controllers, etcd.urls, i))
            data["coordination"]["lease_ttl_s"] = ttl
            data.update({"state_db": state_db, "placement": {"algorithm": "spread"},
                         "network": {"port_min": 21200, "port_max": 21399}, "groups": {group: group_cfg},
                         "autoscaler": {**data["autoscaler"], "tick_s": tick_s, "health_timeout_s": 180,
                                        "drain_s": 1.0, "shutdown_timeout_s": 2.0},
                         "api": {**data["api"], "token": API_TOKEN, "workers": 2}})
            self.configs[i] = workdir / f"c{i}.json.toml"
            self.configs[i].write_text(to_toml(data))

    # -- the controllers ----------------------------------------------------------------------

    def start(self, i: int) -> subprocess.Popen:
        """cms-autoscaler on controller i (in its namespace), logging to ci.log."""
        out = open(self.dir / f"c{i}.log", "ab")
        p = self.ctl.run(i, [sys.executable, "-m", "cms.autoscaler.daemon", "--config", str(self.configs[i])],
                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
        self.procs[i] = p
        return p

    def kill(self, i: int) -> float:
        """SIGKILL controller i's autoscaler (no release, no goodbye); the monotonic time of the kill."""
        p = self.procs.pop(i)
        p.send_signal(signal.SIGKILL)
        at = time.monotonic()
        p.wait(10)
        return at

    def stop(self, i: int) -> None:
        p = self.procs.pop(i, None)
        if p is not None:
            stop_process(p, grace=15)

    def log_tail(self, i: int, n: int = 15, api: bool = False) -> str:
        """The last lines controller i's cms-autoscaler (``api``: cms-api) logged (for a failing test's message)."""
        try:
            return "\n".join((self.dir / (f"c{i}-api.log" if api else f"c{i}.log")).read_text(errors="replace").splitlines()[-n:])
        except OSError as exc:
            return f"(no log: {exc})"

    def health(self, i: int) -> dict[str, Any] | None:
        c = self.controllers[i - 1]
        try:
            with urllib.request.urlopen(f"http://{c.address}:9481/health", timeout=2) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def leader(self) -> int | None:
        """The controller whose /health says it leads (None: none, or none answers)."""
        for i in self.procs:
            h = self.health(i)
            if h and h.get("role") == "leader":
                return i
        return None

    def wait_leader(self, timeout: float, among: tuple[int, ...] | None = None, feed_open: bool = False) -> int:
        def found() -> int | None:
            for i in among or tuple(self.procs):
                h = self.health(i) if i in self.procs else None
                if h and h.get("role") == "leader" and (h.get("feed_open") or not feed_open):
                    return i
            return None
        return wait_until(found, timeout, 0.1, what="a leader")

    # -- the API on each controller ------------------------------------------------------------

    def start_api(self, *which: int, timeout: float = 60.0) -> None:
        """cms-api on each controller named (in its namespace, logging to ci-api.log), once all answer."""
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)       # each cms-api makes its own (cms.api.prom)
        for i in which:
            out = open(self.dir / f"c{i}-api.log", "ab")
            self.apis[i] = self.ctl.run(i, [sys.executable, "-m", "cms.api.serve", "--config", str(self.configs[i])],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env={**env, "CMS_RUN_DIR": str(self.dir / f"run-c{i}")})

        def answers(i: int) -> bool:
            assert self.apis[i].poll() is None, f"cms-api on c{i} exited: {self.log_tail(i, api=True)}"
            try:
                self.api(i).call("GET", "/v1/controller")
                return True
            except Failure:
                return False
        wait_until(lambda: all(answers(i) for i in which), timeout, 0.2, what="cms-api on the controllers")

    def api(self, i: int) -> Client:
        """The `cms` CLI's client of controller i's cms-api (with the token)."""
        return Client(f"http://{self.controllers[i - 1].address}:8080", API_TOKEN, timeout=10)

    # -- the load client ----------------------------------------------------------------------

    def loadgen(self, name: str, *args: str) -> subprocess.Popen:
        pub = ",".join(f"tcp://{c.address}:5556" for c in self.controllers)
        snap = ",".join(f"tcp://{c.address}:5557" for c in self.controllers)
        argv = [sys.executable, "-m", "client.loadgen", "--group", self.group, "--zmq-publish", pub,
                "--zmq-snapshot", snap, "--wait-ready", "120", "--quiet", "--no-keys",
                "--out", str(self.dir / f"{name}.jsonl"), "--summary", str(self.dir / f"{name}.json"), *args]
        p = subprocess.Popen(argv, stdout=open(self.dir / f"{name}.log", "w"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        self.loads.append(p)
        return p

    def loadgen_result(self, name: str, p: subprocess.Popen, timeout: float = 60.0) -> tuple[dict, list[dict]]:
        """Stop the run (SIGINT: it drains and writes its summary); (summary, records)."""
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        return run_result(self.dir, name, p, timeout)

    # -- what happened ------------------------------------------------------------------------

    def store(self) -> Any:
        from cms import config
        from cms.store import Store
        return Store(config.load(self.configs[1]).state_db)

    def fleet(self) -> Any:
        from cms import config
        from cms.virt import Fleet
        return Fleet(config.load(self.configs[1]))

    def domains(self) -> dict[str, str]:
        """The group's domains libvirt has, name -> host (every lab host asked)."""
        fleet = self.fleet()
        try:
            return {d.name: d.host for d in fleet.owned(self.group)}
        finally:
            fleet.close()

    # -- the end ------------------------------------------------------------------------------

    def close(self, remove: bool = True) -> None:
        """End every process it started; ``remove``: and every domain of its group."""
        for p in self.loads:
            with contextlib.suppress(Exception):
                stop_process(p, grace=5)
        for i in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop(i)
        for p in self.apis.values():
            with contextlib.suppress(Exception):
                stop_process(p, grace=10)
        if not remove:
            return
        fleet = self.fleet()
        try:
            for d in fleet.owned(self.group):
                with contextlib.suppress(Exception):
                    fleet.remove(d.host, d.name)
        finally:
            fleet.close()

