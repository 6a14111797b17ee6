"""Wall time of one monitoring tick (bulk stats + utilization + history + policy) by fleet size.

Runs on libvirt's test driver (test:///default, no daemon) with 10, 100 and 1,000 defined
and started domains carrying cms metadata. The test driver fills only state.* in
getAllDomainStats, so CPU counters are injected into each record after the real call.
Prints ONE JSON line: median ms per size, the per-domain slope, and the observe cost
(owned_domains, which reads each domain's metadata) separately.

    .venv/bin/python bench/monitor_tick.py [--ticks 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cms import config, policy  # noqa: E402
from cms.metrics import History, LibvirtMetrics  # noqa: E402
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
        h.define(spec)
        h.guest(name).start()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=30)
    args = ap.parse_args()
    os.environ.setdefault("CMS_RUN_DIR", tempfile.mkdtemp(prefix="cms-bench-"))
    cfg = config.parse({"hosts": [{"name": "t", "uri": "test:///default"}],
                        "groups": {f"b{n}": {"min": 1, "max": 1000} for n in SIZES}})
    fleet = Fleet(cfg)
    h = fleet.host("t")
    real_bulk = h.bulk_stats
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

    h.bulk_stats = bulk_with_cpu
    result: dict[str, object] = {"bench": "monitor_tick", "uri": "test:///default", "ticks": args.ticks}
    medians = {}
    observe = {}
    port = 20000
    for n in SIZES:
        g = f"b{n}"
        populate(fleet, g, n, port)
        port += n
        t0 = time.perf_counter()
        owned = h.owned_domains(g)
        observe[n] = (time.perf_counter() - t0) * 1000
        assert len(owned) == n
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
        "target_ms_at_1000": 20, "ok": medians[1000] <= 20,
        "history_depth": args.ticks,
    })
    print(json.dumps(result))
    fleet.close()


if __name__ == "__main__":
    main()
