"""cms-autoscaler's Prometheus endpoint (prometheus_client): what the daemon knows, as metrics.

Two kinds of figures, one registry:

* State, read at scrape time from the daemon's status snapshot (``Autoscaler.status()``,
  rebuilt at the end of each tick: plain data, no lock) and the feed's plain attributes, by a
  custom collector. A scrape therefore costs no libvirt call and never waits for a tick:
  replicas (CPU, state; requests in flight and the latency histogram their guest server
  keeps, from the tick's /status poll), hosts (up, CPU, VMs, memory), groups (replicas by
  state, desired, min/max, the policy's mean and thresholds, the warm pool), the tick (seq,
  overruns) and the ZeroMQ feed (sequence, subscribers).
* Events, counted as they happen by three hooks the daemon calls: the journal's listener
  (decisions by action, failed replicas, failed spawns, spawn stages, decision -> ready),
  the libvirt call observer (latency by call, errors by code) and ``on_tick`` (tick
  durations). Each hook is a dictionary lookup and an observe; none does I/O.

With ``[history] source = "prometheus"`` (or ``autoscaler.domain_metrics = true``) it also
exports every domain's figures of each tick (cms.autoscaler.domain_metrics: the samples the
store would keep), which cms.promhistory reads. Off otherwise: at 1,000 replicas they
quadruple a scrape (bench/monitor_tick.py: ~110 kB to ~430 kB).

Names follow Prometheus' guide: ``cms_`` prefix, base units (``_seconds``, ``_bytes``,
``_ratio`` for 0..1 fractions), ``_total`` on counters, labels with bounded values (group,
host and replica names come from the configuration and the fleet; ``state``, ``action``,
``stage``, ``call`` and ``code`` from the code). For the ``target`` policy the thresholds are
where it acts: high = target x (1 + tolerance), low = target x (1 - tolerance).

``autoscaler.metrics_listen`` (HOST:PORT, empty: no endpoint) is where it serves /metrics,
and /health: JSON with this controller's role (leader or follower, cms.leadership), its
term, who leads, and the last tick's time and sequence; 200 for either role. A port
that cannot be bound is logged and the daemon scales on without metrics: monitoring must not
stop the control loop, and Prometheus' own ``up`` (the CmsTargetDown rule) reports it.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from cms import policy
from cms.autoscaler.domain_metrics import domain_families
from cms.autoscaler.hoststate import HostState
from cms.autoscaler.lifecycle import State
from cms.config import split_hostport

log = logging.getLogger("cms.autoscaler.exporter")

HOST_STATES = tuple(str(h) for h in HostState)
MIB = 1024 * 1024
STATES = tuple(str(s) for s in State)
ACTIONS = (policy.SCALE_OUT, policy.SCALE_IN)
STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
READY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 240.0, 600.0)
CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0)
TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StatusCollector:
    """The status snapshot as gauge and counter families, built at each scrape."""

    def __init__(self, status: Callable[[], Mapping[str, Any]], publisher: Any = None, domains: bool = False) -> None:
        self.status = status
        self.publisher = publisher
        self.domains = domains

    def describe(self) -> Iterable[Metric]:
        return ()      # the families depend on the snapshot: nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        st = self.status() or {}
        yield from self._replicas(st.get("groups", {}))
        yield from self._groups(st.get("groups", {}))
        yield from self._hosts(st.get("hosts", {}))
        if self.domains:
            yield from domain_families(st.get("domains", ()))
        yield from self._loop(st)
        yield from self._controller(st.get("controller") or {})

    @staticmethod
    def _controller(c: Mapping[str, Any]) -> Iterable[Metric]:
        if not c:
            return
        lead = GaugeMetricFamily("cms_controller_leader", "1 while this controller leads (decides and acts), "
                                 "0 while it follows", labels=["controller"])
        lead.add_metric([c.get("name", "")], 1 if c.get("role") == "leader" else 0)
        term = GaugeMetricFamily("cms_controller_term", "The leader's term this controller acts under "
                                 "(0: not leading, or one controller without coordination)", labels=["controller"])
        term.add_metric([c.get("name", "")], c.get("term") or 0)
        yield from (lead, term)

    @staticmethod
    def _replicas(groups: Mapping[str, Any]) -> Iterable[Metric]:
        cpu = GaugeMetricFamily("cms_replica_cpu_utilization_ratio",
                                "CPU time of the replica's QEMU process over the last tick, per vCPU (1 = all busy)",
                                labels=["group", "replica", "host", "state"])
        flight = GaugeMetricFamily("cms_replica_in_flight", "Requests in flight at the replica, mean over the last "
                                   "tick (its guest server's /status)", labels=["group", "replica", "host"])
        latency = HistogramMetricFamily("cms_replica_latency_seconds", "The replica's /work answers by latency, since "
                                        "its guest server started (its own histogram, from /status)",
                                        labels=["group", "replica", "host"])
        for g, gs in groups.items():
            for r in (*gs.get("replicas", ()), *gs.get("warm_pool", {}).get("members", ())):
                if r.get("cpu") is not None:
                    cpu.add_metric([g, r["name"], r.get("host") or "", r["state"]], r["cpu"])
                if r.get("in_flight") is not None:
                    flight.add_metric([g, r["name"], r.get("host") or ""], r["in_flight"])
                lat = r.get("latency")
                if lat:
                    buckets = [(floatToGoString(b), n) for b, n in zip(lat["bounds_s"], lat["buckets"])]
                    latency.add_metric([g, r["name"], r.get("host") or ""], buckets + [("+Inf", lat["buckets"][-1])],
                                       lat["sum_s"])
        yield from (cpu, flight, latency)

    @staticmethod
    def _groups(groups: Mapping[str, Any]) -> Iterable[Metric]:
        replicas = GaugeMetricFamily("cms_group_replicas", "Replicas of the group by lifecycle state",
                                     labels=["group", "state"])
        desired = GaugeMetricFamily("cms_group_desired_replicas", "Replicas the group wants now", labels=["group"])
        lo = GaugeMetricFamily("cms_group_min_replicas", "The group's configured minimum", labels=["group"])
        hi = GaugeMetricFamily("cms_group_max_replicas", "The group's configured maximum", labels=["group"])
        mean = GaugeMetricFamily("cms_group_cpu_mean_ratio",
                                 "The policy's mean CPU utilization of the group at its last decision",
                                 labels=["group"])
        bounds = GaugeMetricFamily("cms_group_threshold_ratio",
                                   "Where the policy acts: scale out above high, in below low (and its target)",
                                   labels=["group", "bound"])
        pool = GaugeMetricFamily("cms_group_warm_pool_size", "Configured warm pool size and the state members park in",
                                 labels=["group", "mode"])
        target = GaugeMetricFamily("cms_group_warm_pool_target_replicas",
                                   "Warm replicas the group keeps now (its size, never past max with the serving ones)",
                                   labels=["group"])
        warm = GaugeMetricFamily("cms_group_warm_replicas", "Warm pool members by lifecycle state and park mode",
                                 labels=["group", "state", "mode"])
        for g, gs in groups.items():
            wp = gs.get("warm_pool", {})
            by_state = dict.fromkeys(STATES, 0)
            for r in (*gs.get("replicas", ()), *wp.get("members", ())):
                by_state[r["state"]] = by_state.get(r["state"], 0) + 1
            for s, n in by_state.items():
                replicas.add_metric([g, s], n)
            desired.add_metric([g], gs["desired"])
            lo.add_metric([g], gs["min"])
            hi.add_metric([g], gs["max"])
            pol = gs.get("policy", {})
            if pol.get("mean") is not None:
                mean.add_metric([g], pol["mean"])
            for bound, v in _thresholds(pol).items():
                bounds.add_metric([g, bound], v)
            pool.add_metric([g, wp.get("state", "")], wp.get("size", 0))
            target.add_metric([g], wp.get("target", 0))
            members: dict[tuple[str, str], int] = {}
            for m in wp.get("members", ()):
                k = (m["state"], m.get("mode") or "")
                members[k] = members.get(k, 0) + 1
            for (s, mode), n in sorted(members.items()):
                warm.add_metric([g, s, mode], n)
        yield from (replicas, desired, lo, hi, mean, bounds, pool, target, warm)

    @staticmethod
    def _hosts(hosts: Mapping[str, Any]) -> Iterable[Metric]:
        up = GaugeMetricFamily("cms_host_up", "1 when the host is up: it answers and nothing lost is left on it",
                               labels=["host"])
        state = GaugeMetricFamily("cms_host_state", "1 for the host's state (up, suspect, down, fencing), 0 for "
                                  "the others", labels=["host", "state"])
        cpu = GaugeMetricFamily("cms_host_cpu_utilization_ratio",
                                "Share of the host's CPUs cms's domains used over the last tick", labels=["host"])
        node = GaugeMetricFamily("cms_host_node_cpu_utilization_ratio",
                                 "The node's own busy share, where libvirt reports it", labels=["host"])
        cpus = GaugeMetricFamily("cms_host_cpus", "The host's CPUs", labels=["host"])
        vms = GaugeMetricFamily("cms_host_vms", "Running domains cms owns on the host", labels=["host"])
        vcpus = GaugeMetricFamily("cms_host_vcpus", "vCPUs of those domains", labels=["host"])
        mem = GaugeMetricFamily("cms_host_memory_bytes", "The host's memory", labels=["host"])
        free = GaugeMetricFamily("cms_host_memory_free_bytes", "The host's free memory", labels=["host"])
        for h, hs in hosts.items():
            up.add_metric([h], 1 if hs.get("up") else 0)
            for st in HOST_STATES:
                state.add_metric([h, st], 1 if hs.get("state", "up" if hs.get("up") else "down") == st else 0)
            vms.add_metric([h], hs.get("vms") or 0)
            vcpus.add_metric([h], hs.get("vcpus") or 0)
            for fam, v in ((cpu, hs.get("cpu")), (node, hs.get("node_cpu")), (cpus, hs.get("cpus"))):
                if v is not None:
                    fam.add_metric([h], v)
            for fam, mib in ((mem, hs.get("memory_mib")), (free, hs.get("free_memory_mib"))):
                if mib is not None:
                    fam.add_metric([h], mib * MIB)
        yield from (up, state, cpu, node, cpus, vms, vcpus, mem, free)

    def _loop(self, st: Mapping[str, Any]) -> Iterable[Metric]:
        tick = st.get("tick") or {}
        yield CounterMetricFamily("cms_autoscaler_tick_overruns", "Ticks that took longer than autoscaler.tick_s",
                                  value=tick.get("overruns", 0))
        yield GaugeMetricFamily("cms_autoscaler_tick_interval_seconds", "autoscaler.tick_s",
                                value=tick.get("tick_s", 0))
        if st.get("ts") is not None:
            yield GaugeMetricFamily("cms_autoscaler_last_tick_timestamp_seconds", "Wall clock of the last tick",
                                    value=st["ts"])
        seq = getattr(self.publisher, "seq", st.get("feed_seq"))
        if seq is not None:
            yield GaugeMetricFamily("cms_feed_sequence", "Sequence number of the replica feed's last update "
                                    "(from 0 at each start: a new epoch)", value=seq)
        subs = getattr(self.publisher, "subscribers", None)
        if isinstance(subs, int):
            yield GaugeMetricFamily("cms_feed_subscribers", "Live subscriptions to the replica feed", value=subs)
        snaps = getattr(self.publisher, "snapshot_requests", None)
        if isinstance(snaps, int):
            yield CounterMetricFamily("cms_feed_snapshot_requests", "Snapshot requests answered", value=snaps)


def _thresholds(pol: Mapping[str, Any]) -> dict[str, float]:
    if pol.get("name") == "target" and pol.get("target") is not None:
        t, tol = pol["target"], pol.get("tolerance", 0.0)
        return {"high": t * (1 + tol), "low": t * (1 - tol), "target": t}
    return {b: pol[b] for b in ("high", "low") if pol.get(b) is not None}


class Exporter:
    """The registry, its event hooks and (optionally) its HTTP endpoint."""

    def __init__(self, status: Callable[[], Mapping[str, Any]], groups: Iterable[str], publisher: Any = None,
                 *, process: bool = True, domains: bool = False) -> None:
        # Counters' and histograms' *_created series would be more series for nothing here.
        disable_created_metrics()
        r = self.registry = CollectorRegistry(auto_describe=False)
        r.register(StatusCollector(status, publisher, domains))
        if process:
            ProcessCollector(registry=r)
        self.status = status
        self.decisions = Counter("cms_group_decisions", "Scaling decisions the policy took, by action",
                                 ["group", "action"], registry=r)
        self.failures = Counter("cms_replica_failures", "Replicas that failed (crashed, shut off, vanished, "
                                "/health failing, no boot or unpark)", ["group"], registry=r)
        self.spawn_failures = Counter("cms_spawn_failures", "Spawns that failed (placement, clone, define, start)",
                                      ["group"], registry=r)
        # Replicas brought up to serve; a warm-pool member's own boot is off the critical path
        # (its warm_prepared event logs it) and its unpark is the stage that counts.
        self.stages = Histogram("cms_spawn_stage_duration_seconds", "Each stage of bringing a serving replica up: "
                                "clone, define, start, boot (to /health), or unpark from the warm pool",
                                ["group", "stage"], registry=r, buckets=STAGE_BUCKETS)
        self.to_ready = Histogram("cms_decision_to_ready_seconds", "From the decision to add a replica to its "
                                  "/health answering, by path (cold boot or the warm pool)", ["group", "path"],
                                  registry=r, buckets=READY_BUCKETS)
        self.calls = Histogram("cms_libvirt_call_duration_seconds", "libvirt API calls by name", ["call"],
                               registry=r, buckets=CALL_BUCKETS)
        self.errors = Counter("cms_libvirt_errors", "libvirt calls that failed, by call and libvirt error code",
                              ["call", "code"], registry=r)
        self.ticks = Histogram("cms_autoscaler_tick_duration_seconds", "Duration of each reconcile tick",
                               registry=r, buckets=TICK_BUCKETS)
        for g in groups:      # series that exist from the start, so increase() sees the first one
            for a in ACTIONS:
                self.decisions.labels(g, a)
            self.failures.labels(g)
            self.spawn_failures.labels(g)
        self._call_children: dict[str, Any] = {}
        self._last_seq: int | None = None
        self._server: Any = None
        self.address: tuple[str, int] | None = None

    # -- hooks (called on the daemon's threads: quick, never raise) ----------------------------

    def on_event(self, kind: str, group: str, subject: str, data: Mapping[str, Any]) -> None:
        """The journal's listener."""
        if kind == "decision":
            self.decisions.labels(group, str(data.get("action", ""))).inc()
        elif kind == "failed":
            self.failures.labels(group).inc()
        elif kind == "spawn_failed":
            self.spawn_failures.labels(group).inc()
        elif kind == "added":
            # a cold spawn carries clone_s, define_s, start_s; an unpark carries unpark_s
            for key, v in data.items():
                if key.endswith("_s") and isinstance(v, (int, float)):
                    self.stages.labels(group, key[:-2]).observe(v)
        elif kind == "ready":
            if isinstance(data.get("boot_s"), (int, float)):
                self.stages.labels(group, "boot").observe(data["boot_s"])
            for key, path in (("decision_to_ready_s", "cold"), ("unpark_to_ready_s", "warm")):
                if isinstance(data.get(key), (int, float)):
                    self.to_ready.labels(group, path).observe(data[key])

    def on_libvirt_call(self, call: str, seconds: float, code: int | None) -> None:
        """cms.virt's call observer."""
        child = self._call_children.get(call)
        if child is None:
            child = self._call_children[call] = self.calls.labels(call)
        child.observe(seconds)
        if code is not None:
            from cms.virt import error_name
            self.errors.labels(call, error_name(code)).inc()

    def on_tick(self) -> None:
        """After each tick (the run loop's on_tick): its duration into the histogram, once."""
        tick = (self.status() or {}).get("tick") or {}
        seq, took = tick.get("seq"), tick.get("duration_s")
        if seq is not None and seq != self._last_seq and took is not None:
            self._last_seq = seq
            self.ticks.observe(took)

    # -- the endpoint ------------------------------------------------------------------------

    def serve(self, listen: str) -> tuple[str, int]:
        """Serve /metrics on HOST:PORT (port 0: any free one); returns the bound address.
        Raises OSError when it cannot bind."""
        hp = split_hostport(listen)
        if hp is None:
            raise ValueError(f"not HOST:PORT: {listen!r}")
        self._server = serve_http(hp[0], hp[1], self.registry, self.status)
        self.address = (hp[0], self._server.server_address[1])
        return self.address

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def health(st: Mapping[str, Any]) -> dict[str, Any]:
    """What /health answers: the role and the loop's last tick, from the status snapshot."""
    c = st.get("controller") or {}
    tick = st.get("tick") or {}
    return {"status": "ok" if st else "starting", "role": c.get("role"), "name": c.get("name"),
            "term": c.get("term"), "leader": c.get("leader"), "coordination": c.get("coordination"),
            "feed_open": c.get("feed_open"), "since": c.get("since"), "last_tick": st.get("ts"),
            "tick_seq": tick.get("seq")}


def serve_http(host: str, port: int, registry: CollectorRegistry, status: Callable[[], Mapping[str, Any]]) -> Any:
    """/metrics (prometheus_client's WSGI app) and /health on one threaded server, in a thread."""
    import socket
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app
    metrics = make_wsgi_app(registry)

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        if environ.get("PATH_INFO") == "/health":
            body = json.dumps(health(status() or {})).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics(environ, start_response)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = make_server(host, port, app, Server, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="cms-metrics", daemon=True).start()
    return server


def attach(scaler: Any, listen: str = "") -> Exporter:
    """An Exporter on this Autoscaler: its hooks wired in, serving on `listen` when given."""
    from cms.virt import set_call_observer
    cfg = scaler.cfg
    ex = Exporter(scaler.status, scaler.groups, scaler.publisher,
                  domains=cfg.autoscaler.domain_metrics or cfg.history.source == "prometheus")
    scaler.journal.listeners.append(ex.on_event)
    set_call_observer(ex.on_libvirt_call)
    if listen:
        try:
            host, port = ex.serve(listen)
            log.info("serving Prometheus metrics on http://%s/metrics", f"[{host}]:{port}" if ":" in host
                     else f"{host}:{port}")
        except OSError as exc:
            log.error("cannot serve Prometheus metrics on %s (%s): scaling goes on without them", listen, exc)
    return ex


def detach(scaler: Any, ex: Exporter) -> None:
    from cms.virt import set_call_observer
    set_call_observer(None)
    if ex.on_event in scaler.journal.listeners:
        scaler.journal.listeners.remove(ex.on_event)
    ex.close()
