"""cms-demo: the local autoscaling demo, start to finish, on this one machine.

In order it:
 1. checks the golden image (``make demo`` builds or reuses it first);
 2. writes out/demo.toml from the embedded defaults plus the demo's settings below, and
    starts ``cms-autoscaler`` and ``cms-api`` on it as background processes;
 3. lets the autoscaler start the group's first replica (min = 1);
 4. drives ``cms-loadgen`` low -> high -> low (DEMO_SCHEDULE);
 5. shows the scale-out to 2 replicas during high load (max is 3; the third stays unused)
    and the scale-in afterwards; with
    ``--warm-pool N --warm-state paused|saved|stopped`` the second replica comes from a warm
    pool prepared before the load (and goes back into it on the scale-in), instead of a
    cold boot (``make demo`` stays cold: the assignment's demo shows a VM being spawned);
    ``--policy concurrency`` scales on the replicas' requests in flight instead of their
    CPU (cms.policy.concurrency, its defaults): the step is sized in one decision, and the
    summary's headline gives decision -> ready and step -> serving for laying runs side by
    side (``make demo`` stays on threshold);
 6. stops everything it started and removes every domain and volume of its group, also on
    Ctrl-C or SIGTERM, and every VM made through its API meanwhile;
 7. writes out/demo.png (CPU per replica as libvirt reported it, client throughput, p50/p95
    latency, replica count, with scaling events marked) and out/summary.json (throughput
    and latency before and after the scale-out, and the reaction time broken down).

Tuning (issue 5), for 1-vCPU replicas under TCG on a 2-core machine:
 * One request costs DEMO_COST PBKDF2 iterations. ``--calibrate`` measures what one
   replica serves per second at that cost (its capacity C1); the demo does this itself
   against the first replica before the load starts, so the rates follow the machine.
 * Low load is 0.3 x C1: one replica idles around 30 % and nothing scales.
 * High load is 1.15 x C1: one replica saturates (libvirt reports ~95-100 %, above the 90 %
   threshold) and the client's throughput is capped near what one replica serves, so
   latency climbs. Two replicas share it well below the threshold, so with max = 3 the
   third stays unused: that is the point of max 3, the policy does not overshoot (issue
   17). Measured on a 2-core TCG machine: at 1.5 x and 1.3 x C1 with the threshold at 85 %
   over 4 s, two replicas ran at 0.6-1.0 per tick (two busy TCG guests, the client and the
   daemons share 2 cores, so a replica serves less per CPU-second than alone) and a 4 s
   mean reached 0.85-0.87: a third was decided. At 1.25 x with 90 % over 6 s, two replicas
   averaged 0.52 (highest 6 s mean 0.73): one scale-out, p50 latency 620 ms -> 136 ms.
   Two busy TCG guests beside the client and the daemons on 2 cores each serve about 70 %
   of what one serves alone (C1 is measured alone): on 2026-12-06 two replicas read a 6 s
   mean of 0.90-0.92 at 1.25 x and at 1.2 x (C1 5.0-5.5 req/s, 3.3 req/s each), and a third
   was decided. At 1.1 x two replicas ran at 0.5-0.7, but one replica alone served what
   was offered (the calibration reads C1 ~10 % low: 5.6 against 6.2 req/s served at 100 %),
   so the scale-out added no throughput. 1.15 x lies between the two.
   Throughput after/before is small (~1.1): the "before" window is the few seconds between
   the load step and the new replica's ready, before the queue has grown.
 * Requests time out 30 s after their intended send time and are shed unsent after 15 s
   in the client's queue, so an overloaded replica does not waste its CPU on answers the
   client has given up on.
 * The client keeps at most 4 connections per replica: what one replica cannot take waits
   in the client, where open-loop timing still counts it as latency, instead of piling up
   as threads inside the guest until /health starves.
 * Scale-out needs the mean above 90 % for 6 s; scale-in needs it below 25 % for 15 s;
   cooldown 10 s. Replica warm-up 15 s: the newcomer's first seconds are kept out of the
   mean and the policy holds (its windows restart after the warm-up), so the backlog that
   queued while one replica was saturated drains (both replicas at ~100 % for ~10 s)
   without being read as a need for a third. These are the demo's values; the shipped
   defaults (etc/cms.toml.example) are a little slower to react, which suits real services.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from client.schedule import ScheduleError, parse_schedule, total_seconds
from cms import config as cmsconfig
from cms.demo.api import destroy_api_vms, write_api_inventory
from cms.demo.common import GROUP, golden_of, run_to_end, say, start, wait_ready
from cms.errors import CmsError, NotFound
from cms.netutil import free_port
from guest.cms_work import MAX_COST, MIN_COST

DEMO_COST = 20000
DEMO_SCHEDULE = "low:30s,high:120s,low:75s"
LOW_FACTOR = 0.3
HIGH_FACTOR = 1.15
CLIENT_CONNS = 4  # connections the load client keeps per replica (and calibration uses)
CAL_BURSTS, CAL_BURST_S, CAL_GAP_S, CAL_SKIP_S = 4, 2.5, 2.0, 0.5


def demo_config_data(out: Path, *, golden: str, api_port: int, pub_port: int, snap_port: int,
                     base: dict[str, Any] | None = None, warm_pool: int = 0, token: str = "",
                     warm_state: str = "paused", max_replicas: int = 3, policy: str = "threshold") -> dict[str, Any]:
    """The demo's configuration; ``base`` is the TOML of --config, whose [libvirt] and [image]
    keys are kept (the demo's own pool and golden image go over them). ``warm_pool``: replicas
    kept parked in ``warm_state`` for the scale-out (0: every new replica boots cold)."""
    base = base or {}
    pool = {"warm_pool": {"size": warm_pool, "state": warm_state}} if warm_pool else {}
    return {
        "state_db": str(out / "state.db"),
        "libvirt": {"domain_type": "auto", **base.get("libvirt", {}), "pool": "cms-demo",
                    "pool_path": "/var/lib/cms/demo-pool"},
        "image": {**base.get("image", {}), "golden": golden},
        "network": {"port_min": 20500, "port_max": 20599},
        "groups": {GROUP: {
            "min": 1, "max": max_replicas, "vcpus": 1, "memory_mib": 512, "policy": policy,
            "cooldown_s": 10.0, "warmup_s": 15.0,
            "threshold": {"high": 0.9, "low": 0.25, "window_s": 6.0, "window_in_s": 15.0},
            **pool,
        }},
        "autoscaler": {"tick_s": 1.0, "drain_s": 2.0, "shutdown_timeout_s": 5.0},
        "zmq": {"publish": f"tcp://127.0.0.1:{pub_port}", "snapshot": f"tcp://127.0.0.1:{snap_port}"},
        "api": {"bind": f"127.0.0.1:{api_port}", "workers": 2, "token": token},
    }


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.procs: dict[str, subprocess.Popen] = {}
        self.cfg: cmsconfig.Config | None = None
        self.bin = Path(sys.executable).parent
        self._seen_event = 0

    # -- processes -----------------------------------------------------------------------

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        p = start(self.out / f"{name}.log", argv, {"CMS_CONFIG": str(self.out / "demo.toml"), "PYTHONUNBUFFERED": "1"})
        self.procs[name] = p
        return p

    def stop(self, name: str, timeout: float = 10.0) -> None:
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def cleanup(self) -> None:
        self.stop("loadgen")
        self.destroy_api_vms()
        for name in ("api", "autoscaler"):
            self.stop(name)
        if self.cfg is None:
            return
        from cms.virt import Fleet
        fleet = Fleet(self.cfg)
        try:
            left = fleet.owned(GROUP)
            for d in left:
                say(f"removing {d.name}")
                with contextlib.suppress(CmsError):
                    fleet.remove(d.host, d.name)
            try:
                vols = [v for v in fleet.host("local").storage.list_volumes(self.cfg.libvirt.pool) if v.startswith(f"cms-{GROUP}-")]
            except NotFound:
                vols = []  # the pool is made with the first replica
            for v in vols:
                fleet.host("local").storage.delete_volume(self.cfg.libvirt.pool, v)
            say(f"cleaned up: {len(left)} domain(s) removed, nothing of group {GROUP!r} left")
        except CmsError as exc:
            say(f"cleanup could not reach libvirt: {exc}")
        finally:
            fleet.close()

    def destroy_api_vms(self) -> None:
        """While its API runs: every VM made through it goes (cms.demo.api)."""
        p = self.procs.get("api")
        if self.cfg is not None and p is not None and p.poll() is None:
            destroy_api_vms(self.cfg)

    # -- the run --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        a = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        for f in ("state.db", "state.db-wal", "state.db-shm", "loadgen.jsonl", "summary.json", "demo.png"):
            with contextlib.suppress(FileNotFoundError):
                (self.out / f).unlink()
        golden = golden_of(a)
        if not Path(golden).exists():
            raise CmsError(f"golden image {golden} not found: build it with `make image` (make demo does)")
        ports = dict(api_port=a.api_port or free_port(), pub_port=free_port(), snap_port=free_port())
        data = demo_config_data(self.out, golden=golden, base=a.base, warm_pool=a.warm_pool,
                                warm_state=a.warm_state, max_replicas=a.max, policy=a.policy,
                                token=secrets.token_urlsafe(12), **ports)
        (self.out / "demo.toml").write_text("# written by cms-demo\n" + cmsconfig.to_toml(data))
        (self.out / "demo.toml").chmod(0o600)          # it holds the run's API token
        write_api_inventory(self.out, golden)
        self.cfg = cmsconfig.load(self.out / "demo.toml")
        self.cleanup()  # whatever an interrupted earlier run left behind
        os.environ["CMS_RUN_DIR"] = str(self.out / "run")

        self.start("autoscaler", [str(self.bin / "cms-autoscaler"), "--config", str(self.out / "demo.toml")])
        if (self.bin / "cms-api").exists():
            self.start("api", [str(self.bin / "cms-api"), "--config", str(self.out / "demo.toml")])
            say(f"the console: {self.cfg.api.url}/ (to act in it, the token is api.token "
                f"in {self.out / 'demo.toml'})")
        say("waiting for the first replica to boot and answer /health (TCG: ~10-20 s)")
        first = self.wait_first_replica(timeout=a.boot_timeout)
        say(f"replica {first.name} is ready at {first.address}:{first.port}")
        self.say_spawn_stages()
        if a.warm_pool:
            self.wait_warm_pool(timeout=a.boot_timeout)

        c1 = a.capacity or self.calibrate(f"{first.address}:{first.port}")
        low, high = round(LOW_FACTOR * c1, 2), round(HIGH_FACTOR * c1, 2)
        say(f"one replica serves ~{c1:.1f} req/s at cost {a.cost}: low = {low} req/s, high = {high} req/s")
        say(f"load schedule {a.schedule}; watch the autoscaler go 1 -> 2 -> 1")
        lg = self.start("loadgen", [
            str(self.bin / "cms-loadgen"), "--config", str(self.out / "demo.toml"), "--group", GROUP,
            "--schedule", a.schedule, "--low-rate", str(low), "--high-rate", str(high), "--cost", str(a.cost),
            "--balance", "least", "--max-conns", str(CLIENT_CONNS), "--timeout", "30", "--out", str(self.out / "loadgen.jsonl"),
            "--summary", str(self.out / "loadgen-summary.json"), "--quiet", "--no-keys", "--wait-ready", "60"])
        total = total_seconds(parse_schedule(a.schedule))
        deadline = time.monotonic() + total + 120
        last = 0.0
        while lg.poll() is None:
            if time.monotonic() > deadline:
                raise CmsError("the load client ran past its schedule; stopping")
            if time.monotonic() - last > 10:
                last = time.monotonic()
                say(self.progress_line())
            self.say_spawn_stages()
            time.sleep(0.5)
        self.procs.pop("loadgen", None)
        if lg.returncode != 0:
            raise CmsError(f"cms-loadgen exited with {lg.returncode}; see {self.out / 'loadgen.log'}")
        say("load finished; stopping the autoscaler")
        self.stop("autoscaler")
        self.stop("api")
        from cms.demo.report import build_report
        summary = build_report(self.out, GROUP, cost=a.cost, low_rate=low, high_rate=high, capacity=c1,
                               max_replicas=a.max, warm_pool=a.warm_pool, policy=a.policy,
                               warm_state=a.warm_state if a.warm_pool else "")
        say(f"wrote {self.out / 'demo.png'} and {self.out / 'summary.json'}")
        return summary

    def wait_first_replica(self, timeout: float) -> Any:
        assert self.cfg is not None

        def alive() -> None:
            p = self.procs.get("autoscaler")
            if p is not None and p.poll() is not None:
                raise CmsError(f"cms-autoscaler exited with {p.returncode}; see {self.out / 'autoscaler.log'}")

        return wait_ready(self.cfg, 1, timeout, alive)[0]

    def calibrate(self, endpoint: str) -> float:
        """Requests/s one replica serves at the demo's cost, at CLIENT_CONNS concurrent
        requests (as many as the load client keeps open to one replica).

        In CAL_BURSTS bursts of CAL_BURST_S with CAL_GAP_S idle between them: every
        scale-out window (4 s) then holds an idle tick, so the autoscaler's per-tick guard
        keeps the calibration itself from scaling the group out and back in before the
        load starts. The first CAL_SKIP_S of each burst (connections warming up) is left out.
        """
        from cms.lab.loadstep import capacity
        host, port = endpoint.rsplit(":", 1)
        # the concurrency policy would scale out on CLIENT_CONNS requests in flight (rightly:
        # that is load); one at a time keeps the 1-vCPU replica as busy and nothing in flight
        conns = 1 if self.args.policy == "concurrency" else CLIENT_CONNS
        say(f"calibrating: {CAL_BURSTS} bursts of {CAL_BURST_S:g} s of saturating load on the first replica")
        rates = []
        for _ in range(CAL_BURSTS):
            rates.append(capacity(host, int(port), self.args.cost, conns, CAL_BURST_S, CAL_SKIP_S))
            time.sleep(CAL_GAP_S)
        rate = sum(rates) / len(rates)     # bursts of one length: the rate over all of them
        if rate <= 0:
            raise CmsError("calibration got no answer from the first replica")
        return rate

    def wait_warm_pool(self, timeout: float) -> None:
        """Until the pool holds what it can (its size, at most max - min): booted, then parked."""
        from cms.autoscaler.planner import pool_target
        from cms.store import Store
        assert self.cfg is not None
        gc = self.cfg.groups[GROUP]
        want = pool_target(gc, gc.min)
        say(f"waiting for the warm pool: {want} replica(s) booted to /health, then {gc.warm_pool.state}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.say_spawn_stages()
            with contextlib.suppress(Exception):
                if len(Store(self.out / "state.db").events(group=GROUP, kinds=["warm_prepared"])) >= want:
                    return
            time.sleep(1.0)
        raise CmsError(f"the warm pool was not ready within {timeout:.0f} s; see {self.out / 'autoscaler.log'}")

    def say_spawn_stages(self) -> None:
        """A line per replica the autoscaler added (clone, define, start times) and per replica
        that became ready (boot to /health), from its events, as they happen."""
        from cms.store import Store
        try:
            events = Store(self.out / "state.db").events(since_id=self._seen_event, group=GROUP,
                                                         kinds=["added", "ready", "warm_used", "warm_prepared"])
        except Exception:  # noqa: BLE001 - the daemon may not have made the file yet
            return
        for e in events:
            self._seen_event = e.id
            d = e.data
            if e.kind == "added" and "define_s" in d:
                say(f"{e.subject} defined and started on {d.get('host', '?')}: clone {d.get('clone_s', 0):.2f} s, "
                    f"define {d['define_s']:.2f} s, start {d.get('start_s', 0):.2f} s")
            elif e.kind == "ready" and "boot_s" in d:
                say(f"{e.subject} ready: boot to /health {d['boot_s']:.1f} s")
            elif e.kind in ("warm_used", "warm_prepared"):
                say(f"{e.subject}: {e.message}")

    def progress_line(self) -> str:
        path = self.out / "loadgen.jsonl"
        tick = None
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines()[-20:]:
                with contextlib.suppress(ValueError):
                    d = json.loads(line)
                    if d.get("type") == "tick":
                        tick = d
        if tick is None:
            return "load client starting"
        p95 = tick["latency_ms"].get("p95")
        return (f"mode {tick['mode']:<4} target {tick['target_rate']} req/s, throughput {tick['throughput']:.1f} req/s, "
                f"p95 {'-' if p95 is None else f'{p95:.0f}'} ms, ready replicas {tick['ready']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cms-demo", description="The local autoscaling demo (see README).")
    p.add_argument("--out", default="out", help="output directory (default out/)")
    p.add_argument("--config", help="a cms.toml to start from: the demo keeps its [libvirt] and [image] keys and "
                   "lays its own group, ports, pool and state file over them (default: the embedded defaults)")
    p.add_argument("--golden", help=f"golden image (default: image.golden of --config, else {cmsconfig.ImageConfig().golden})")
    p.add_argument("--schedule", default=DEMO_SCHEDULE, help="load schedule (default %(default)s)")
    p.add_argument("--cost", type=int, default=DEMO_COST, help="PBKDF2 iterations per request (default %(default)s)")
    p.add_argument("--capacity", type=float, default=0.0,
                   help="one replica's req/s at that cost; 0 measures it (default)")
    p.add_argument("--api-port", type=int, default=0, help="port for cms-api (default: a free one)")
    p.add_argument("--boot-timeout", type=float, default=180.0, help="seconds for the first replica (default 180)")
    p.add_argument("--max", type=int, default=3, metavar="N",
                   help="the group's max replicas (default 3: the high load needs two, and the third "
                        "staying unused shows the policy does not overshoot)")
    p.add_argument("--warm-pool", type=int, default=0, metavar="N",
                   help="keep N replicas booted and parked for the scale-out (default 0: it boots a new VM, "
                        "as make demo shows)")
    p.add_argument("--warm-state", choices=("paused", "saved", "stopped"), default="paused",
                   help="how the warm replicas are parked (default paused)")
    p.add_argument("--policy", choices=("threshold", "concurrency"), default="threshold",
                   help="threshold: on the replicas' CPU, the demo's settings (default, as make demo); "
                        "concurrency: on their requests in flight, with its defaults")
    p.add_argument("--scenario", choices=("autoscale", "balance"), default="autoscale",
                   help="autoscale: 1 -> 2 -> 1 replicas (default); balance: a replica live-migrates between two "
                        "lab hosts while serving (cms.demo.host_balancing)")
    args = p.parse_args(argv)
    args.base = {}
    if args.config:
        cmsconfig.load_or_exit(args.config)      # a bad file: one line naming it, exit 2
        import tomllib
        args.base = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
    if args.scenario == "balance":
        from cms.demo import host_balancing
        return host_balancing.main(Path(args.out).resolve(), golden_of(args))
    try:
        parse_schedule(args.schedule)
    except ScheduleError as exc:
        p.error(f"bad --schedule {args.schedule!r}: {exc}")
    if not 1 <= args.max <= 20:
        p.error(f"--max must be from 1 to 20, not {args.max}")
    if not 0 <= args.warm_pool <= 1000:
        p.error(f"--warm-pool must be from 0 to 1000, not {args.warm_pool}")
    if not MIN_COST <= args.cost <= MAX_COST:
        p.error(f"--cost must be from {MIN_COST} to {MAX_COST} (what the guest accepts), not {args.cost}")
    demo = Demo(args)
    return run_to_end(demo.run, lambda summary: summary["headline"], demo.cleanup)


if __name__ == "__main__":
    sys.exit(main())
