"""Wall time of one monitoring tick (bulk stats + utilization + history + policy) by fleet size.

Runs on libvirt's test driver (test:///default, no daemon) with 10, 100 and 1,000 defined
and started domains carrying cms metadata. The test driver fills only state.* in
getAllDomainStats, so CPU counters are injected into each record after the real call.
Prints ONE JSON line: median ms per size, the per-domain slope, and the observe cost
(owned_domains, which reads each domain's metadata) separately. ``listing_ms`` is the
tick's listing at each size once the metadata is cached, both ways, alternating: the
bulk call made directly and ``Fleet.list_domains`` (each host on its own thread, with a
deadline), so the thread hand-off's cost shows beside the call.

Then, under "exporter", the whole daemon tick (``Autoscaler.tick``: listing, metrics, plan,
execute, publish) at 1,000 ready replicas with the Prometheus exporter off and on, tick by
tick alternately: "on" is the tick with every hook live (libvirt call observer, journal
listener, ``on_tick``) plus one full scrape (``generate_latest``) after EVERY tick, far more
than Prometheus' usual 15 s against a 1 s tick. The replicas' CPU figures come from a
constant source (the arithmetic is measured above); health checks answer at once.
``overhead_pct`` is the median over neighbouring pairs of (on + scrape - off), over the
median tick off; the target is at most 20 %.

    .venv/bin/python bench/monitor_tick.py [--ticks 30]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cms import config, policy  # noqa: E402
from cms.metrics import DomainMetrics, History, LibvirtMetrics, Tick  # noqa: E402
from cms.virt import Fleet, OwnerMeta  # noqa: E402
from cms.virt import xml as vxml  # noqa: E402

SIZES = (10, 100, 1000)


def populate(fleet: Fleet, group: str, n: int, port0: int) -> None:
    h = fleet.host("t")
    for i in range(n):
        name = f"cms-{group}-{i:05d}"
        spec = vxml.DomainSpec(name=name, uuid=h.new_uuid(), vcpus=1, memory_mib=128, disk_path="/dev/null",
                               meta=OwnerMeta(group=group, role="replica", created=float(i), port=port0 + i),
                               domain_type="test")
        h.domains.define(spec)
        h.guest(name).start()


class _ConstantCpu:
    """Every replica at half its vCPUs each tick."""

    def sample(self, domains):
        tick = Tick(ts=time.time())
        for d in domains:
            tick.domains[d.uuid] = DomainMetrics(d.uuid, d.name, d.host, 0.5, {}, d.vcpus, d.memory_mib * 1024, 1)
        return tick


class _Healthy:
    def healthy(self, address, port):
        return True

    def in_flight(self, address, port):
        return 0


def exporter_overhead(group: str, n: int, ticks: int) -> dict[str, object]:
    """Autoscaler.tick at n ready replicas of `group` (already defined on test:///default),
    `ticks` each with the exporter off and on, alternating."""
    from prometheus_client import generate_latest

    from cms.autoscaler import exporter
    from cms.autoscaler.publisher import NullPublisher
    from cms.autoscaler.reconcile import Autoscaler
    from cms.store import Store
    from cms.virt import set_call_observer
    tmp = tempfile.mkdtemp(prefix="cms-bench-exporter-")
    cfg = config.parse({"hosts": [{"name": "t", "uri": "test:///default"}], "state_db": f"{tmp}/state.db",
                        "groups": {group: {"min": 1, "max": n}}, "autoscaler": {"tick_s": 1.0}})
    s = Autoscaler(cfg, metrics=_ConstantCpu(), health=_Healthy(), publisher=NullPublisher(), groups=[group],
                   store=Store.of(cfg))
    ex = exporter.Exporter(s.status, s.groups, s.publisher)
    try:
        deadline = time.monotonic() + 300
        while sum(1 for t in s.tracks.values() if t.state == "ready") < n:   # adopt them all first
            assert time.monotonic() < deadline, "the replicas did not become ready"
            s.tick()
            time.sleep(0.05)
        off: list[float] = []
        on: list[float] = []
        scrape: list[float] = []

        def timed(hooks: bool) -> None:
            gc.collect()           # so a collection lands in neither mode's figure by chance
            settle = time.monotonic() + 5
            while any(t.checking for t in list(s.tracks.values())) and time.monotonic() < settle:
                time.sleep(0.005)  # and the last tick's health probes are done
            if hooks:
                s.journal.listeners.append(ex.on_event)
                set_call_observer(ex.on_libvirt_call)
            t0 = time.perf_counter()
            s.tick()
            if hooks:
                ex.on_tick()
            (on if hooks else off).append((time.perf_counter() - t0) * 1000)
            if hooks:
                s.journal.listeners.remove(ex.on_event)
                set_call_observer(None)
                t0 = time.perf_counter()
                generate_latest(ex.registry)
                scrape.append((time.perf_counter() - t0) * 1000)

        for i in range(ticks):     # off/on, then on/off: the machine's noise and any after-effect hit both
            for hooks in ((False, True) if i % 2 == 0 else (True, False)):
                timed(hooks)
        text = generate_latest(ex.registry)
        assert text.count(b"cms_replica_cpu_utilization_ratio{") == n, "the scrape missed replicas"
        observed = sum(smp.value for fam in ex.calls.collect() for smp in fam.samples
                       if smp.name.endswith("_count"))
    finally:
        set_call_observer(None)
        s.close()
    m_off, m_on, m_scrape = (statistics.median(v) for v in (off, on, scrape))
    # the added cost pair by pair (the pairs are next to each other in time), over the tick off
    pct = statistics.median(a + sc - b for a, sc, b in zip(on, scrape, off)) / m_off * 100
    return {"domains": n, "ticks_each": len(off), "tick_ms_off": round(m_off, 2), "tick_ms_on": round(m_on, 2),
            "scrape_ms": round(m_scrape, 2), "scrape_bytes": len(text),
            "libvirt_calls_per_tick": round(observed / len(on), 1),
            "hooks_overhead_pct": round((m_on - m_off) / m_off * 100, 1), "overhead_pct": round(pct, 1),
            "target_pct": 20, "ok": pct <= 20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=30)
    args = ap.parse_args()
    os.environ.setdefault("CMS_RUN_DIR", tempfile.mkdtemp(prefix="cms-bench-"))
    cfg = config.parse({"hosts": [{"name": "t", "uri": "test:///default"}],
                        "groups": {f"b{n}": {"min": 1, "max": 1000} for n in SIZES}})
    fleet = Fleet(cfg)
    h = fleet.host("t")
    real_bulk = h.stats.bulk_stats
    counter = [0]

    def bulk_with_cpu(uuids=None):
        out = real_bulk(uuids)
        counter[0] += 1
        for i, rec in enumerate(out.values()):
            busy = 4 * 10**8 + (i % 7) * 10**8             # 40-100 % of a vCPU per second
            rec["cpu.time"] = counter[0] * busy
            rec["vcpu.current"] = 1
            rec["vcpu.0.time"] = counter[0] * busy
            rec["balloon.current"] = 131072
        return out

    h.stats.bulk_stats = bulk_with_cpu
    result: dict[str, object] = {"bench": "monitor_tick", "uri": "test:///default", "ticks": args.ticks}
    medians = {}
    observe = {}
    listing = {}
    port = 20000
    for n in SIZES:
        g = f"b{n}"
        populate(fleet, g, n, port)
        port += n
        t0 = time.perf_counter()
        owned = h.stats.owned_domains(g)
        observe[n] = (time.perf_counter() - t0) * 1000
        assert len(owned) == n
        direct, threaded = [], []
        for k in range(args.ticks):
            for via_fleet in ((False, True) if k % 2 == 0 else (True, False)):
                t0 = time.perf_counter()
                got = fleet.list_domains(g).on("t") if via_fleet else h.stats.owned_domains(g)
                (threaded if via_fleet else direct).append((time.perf_counter() - t0) * 1000)
                assert len(got) == n
        listing[n] = {"direct": round(statistics.median(direct), 2),
                      "list_domains": round(statistics.median(threaded), 2)}
        src = LibvirtMetrics(fleet)
        hist = History(cfg.autoscaler.history)
        gc = cfg.groups[g]
        times = []
        for k in range(args.ticks + 1):
            t0 = time.perf_counter()
            now = time.time()
            tick = src.sample(owned)
            for d in owned:
                m = tick.domains.get(d.uuid)
                hist.add(d.name, now, m.cpu if m else None)
            series = tuple(policy.ReplicaSeries(d.name, 0.0, hist.series(d.name)) for d in owned)
            policy.decide(gc, policy.PolicyInput(now=now, current=n, replicas=series))
            if k:  # the first tick only sets the baseline
                times.append((time.perf_counter() - t0) * 1000)
        medians[n] = statistics.median(times)
    slope = (medians[SIZES[-1]] - medians[SIZES[0]]) / (SIZES[-1] - SIZES[0])
    result.update({
        "median_ms": {str(n): round(v, 3) for n, v in medians.items()},
        "per_domain_ms": round(slope, 5),
        "observe_owned_domains_ms": {str(n): round(v, 2) for n, v in observe.items()},
        "listing_ms": {str(n): v for n, v in listing.items()},
        "target_ms_at_1000": 20, "ok": medians[1000] <= 20,
        "history_depth": args.ticks,
    })
    result["exporter"] = exporter_overhead(f"b{SIZES[-1]}", SIZES[-1], ticks=max(10, 2 * args.ticks))
    print(json.dumps(result))
    fleet.close()


if __name__ == "__main__":
    main()
