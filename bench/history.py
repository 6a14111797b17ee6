"""The history API's reads over a full retention window; prints one JSON line.

A state database holding 24 h of one-second samples for --domains domains on one host (what
the autoscaler writes at tick_s = 1 with the default [history] retention_s), then the three
downsampled reads the console makes for its 24 h range (300 points each): one VM's series,
one host's series summed from its domains' samples (no host rows), and each domain's share
of that host. Also the file size per domain-day and one prune of an hour's worth of rows.

Usage: .venv/bin/python bench/history.py [--domains 10] [--hours 24]
Target: each 24 h read in under 1 s with 10 domains (the console polls a 24 h chart once a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cms.store import Sample, Store  # noqa: E402

T0 = 1_700_000_000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--domains", type=int, default=10)
    ap.add_argument("--hours", type=float, default=24.0)
    a = ap.parse_args()
    span = int(a.hours * 3600)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "state.db")
        s = Store(path)
        t0 = time.perf_counter()
        batch = []
        for i in range(span):
            for n in range(a.domains):
                batch.append(Sample(T0 + i, "h1", f"cms-vm-{n}", "", (i % 60) / 60, 2, 524288, "running", (0.1, 0.2)))
            if len(batch) >= 20000:
                s.add_samples(batch)
                batch = []
        s.add_samples(batch)
        fill_s = time.perf_counter() - t0
        s.connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size_mb = os.path.getsize(path) / 1e6
        step = span / 300
        reads = {}
        for name, fn in (("vm", lambda: s.domain_buckets("cms-vm-0", T0, T0 + span, step)),
                         ("host", lambda: s.tick_buckets(T0, T0 + span, step, host="h1")),
                         ("host_per_domain", lambda: s.domain_share_buckets(T0, T0 + span, step, host="h1"))):
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                rows = fn()
                best = min(best, time.perf_counter() - t)
            reads[name] = {"seconds": round(best, 4), "rows": len(rows)}
        t = time.perf_counter()
        gone = s.prune_history(T0 + 3600)
        prune_s = time.perf_counter() - t
    print(json.dumps({"bench": "history", "domains": a.domains, "hours": a.hours, "rows": span * a.domains,
                      "fill_seconds": round(fill_s, 2), "db_mb": round(size_mb, 1),
                      "mb_per_domain_day": round(size_mb / a.domains / (a.hours / 24), 1),
                      "reads_24h_300_points": reads,
                      "prune_one_hour": {"seconds": round(prune_s, 3), "rows": gone["samples"]}}))


if __name__ == "__main__":
    main()
