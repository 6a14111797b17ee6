"""History at fleet scale, on each place it can live; prints one JSON line.

24 h of one-second samples for --domains domains on one host (what the autoscaler writes at
tick_s = 1 with the default [history] retention_s), kept three ways side by side:

* **sqlite**: the state database as a SQLite file (``[history] source = "store"``, the default);
* **postgresql**: the same rows in a throwaway PostgreSQL (cms.lab.postgres), state_db a URL;
* **prometheus**: the series cms-autoscaler exports for them (cms_domain_*, cms_host_*, one
  sample per second), written as OpenMetrics and backfilled with ``promtool tsdb
  create-blocks-from openmetrics`` into a Prometheus that then serves them
  (``source = "prometheus"``, read by cms.promhistory).

Each answers the three downsampled reads the console makes for its 24 h range (300 points):
one VM's series, the host's series summed from its domains, and each domain's share of the
host; best of three, each read under 1 s is the target. ``bytes_per_domain_day`` is what each
keeps on disk for one domain's day: SQLite's file, PostgreSQL's table and indexes
(pg_total_relation_size), Prometheus' blocks. Last, the API's /vm/query throughput on
PostgreSQL against SQLite (bench/api.py's wrk run, sync workers, interleaved): each within 2x
of the other is the target.

Usage: .venv/bin/python bench/history.py [--domains 10] [--hours 24] [--api-duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cms.lab.postgres import Cluster  # noqa: E402
from cms.promhistory import PrometheusHistory  # noqa: E402
from cms.store import Sample, Store  # noqa: E402

HOST = "h1"


def fill(store: Store, t0: float, span: int, domains: int) -> float:
    t = time.perf_counter()
    batch = []
    for i in range(span):
        for n in range(domains):
            batch.append(Sample(t0 + i, HOST, f"cms-vm-{n}", "", (i % 60) / 60, 2, 524288, "running", (0.1, 0.2)))
        if len(batch) >= 20000:
            store.add_samples(batch)
            batch = []
    store.add_samples(batch)
    return time.perf_counter() - t


def reads(src, t0: float, span: int) -> dict:
    step = span / 300
    out = {}
    for name, fn in (("vm", lambda: src.domain_buckets("cms-vm-0", t0, t0 + span, step)),
                     ("host", lambda: src.tick_buckets(t0, t0 + span, step, host=HOST)),
                     ("host_per_domain", lambda: src.domain_share_buckets(t0, t0 + span, step, host=HOST))):
        best, rows = float("inf"), []
        for _ in range(3):
            t = time.perf_counter()
            rows = fn()
            best = min(best, time.perf_counter() - t)
        out[name] = {"seconds": round(best, 4), "rows": len(rows)}
    return out


def openmetrics(path: Path, t0: float, span: int, domains: int) -> None:
    """What cms-autoscaler's exporter shows for the same samples, one scrape a second, as
    OpenMetrics with timestamps (each family's series one after another, in time order)."""
    with open(path, "w") as f:
        def family(name: str, series: list[tuple[str, object]]) -> None:
            f.write(f"# TYPE {name} gauge\n")
            for labels, value in series:
                for i in range(span):
                    v = value(i) if callable(value) else value
                    f.write(f"{name}{{{labels}}} {v} {int(t0) + i}\n")
        doms = [f'domain="cms-vm-{n}",host="{HOST}",group=""' for n in range(domains)]
        family("cms_domain_cpu_utilization_ratio", [(d, lambda i: round((i % 60) / 60, 6)) for d in doms])
        family("cms_domain_vcpu_utilization_ratio", [(f'domain="cms-vm-{n}",vcpu="{c}"', v) for n in range(domains)
                                                     for c, v in ((0, 0.1), (1, 0.2))])
        family("cms_domain_vcpus", [(d, 2) for d in doms])
        family("cms_domain_memory_bytes", [(d, 524288 * 1024) for d in doms])
        family("cms_domain_state", [(f'domain="cms-vm-{n}",group="",state="running"', 1) for n in range(domains)])
        family("cms_autoscaler_tick_interval_seconds", [("", 1)])
        f.write("# EOF\n")


def prometheus_side(tmp: Path, t0: float, span: int, domains: int) -> dict:
    om, tsdb = tmp / "history.om", tmp / "tsdb"
    t = time.perf_counter()
    openmetrics(om, t0, span, domains)
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om), str(tsdb)], check=True,
                   capture_output=True, timeout=3600)
    om.unlink()
    fill_s = time.perf_counter() - t
    size = sum(p.stat().st_size for p in tsdb.rglob("*") if p.is_file())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp / "prometheus.yml").write_text("global: {scrape_interval: 15s}\n")
    log = open(tmp / "prometheus.log", "w")
    proc = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tsdb}",
                             "--storage.tsdb.retention.time=30d", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("prometheus did not start: " + (tmp / "prometheus.log").read_text()[-2000:])
            time.sleep(0.2)
        r = reads(PrometheusHistory(f"http://127.0.0.1:{port}", 30.0), t0, span)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    return {"fill_seconds": round(fill_s, 1), "bytes": size, "reads_24h_300_points": r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--domains", type=int, default=10)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--api-duration", type=int, default=10, help="seconds of wrk per /vm/query run")
    a = ap.parse_args()
    span = int(a.hours * 3600)
    t0 = float(int(time.time() - span - 3600))     # the past day: Prometheus keeps it (retention counts from now)
    days = a.domains * a.hours / 24
    out: dict = {"bench": "history", "domains": a.domains, "hours": a.hours, "rows": span * a.domains}
    tmp = Path(tempfile.mkdtemp(prefix="cms-bench-history-"))
    try:
        with Cluster.started() as pg:
            for name, url in (("sqlite", str(tmp / "state.db")), ("postgresql", pg.new_database())):
                s = Store(url)
                fill_s = fill(s, t0, span, a.domains)
                with s.read() as c:
                    if s.backend == "sqlite":
                        c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                        size = os.path.getsize(url)
                    else:
                        c.exec_driver_sql("VACUUM ANALYZE samples")
                        size = c.exec_driver_sql("SELECT pg_total_relation_size('samples')").scalar()
                out[name] = {"fill_seconds": round(fill_s, 1), "bytes": size, "reads_24h_300_points": reads(s, t0, span)}
                t = time.perf_counter()
                gone = s.prune_history(t0 + 3600)
                out[name]["prune_one_hour"] = {"seconds": round(time.perf_counter() - t, 3), "rows": gone["samples"]}
                s.close()
                print(f"{name}: {out[name]}", file=sys.stderr, flush=True)
            out["prometheus"] = prometheus_side(tmp, t0, span, a.domains)
            print(f"prometheus: {out['prometheus']}", file=sys.stderr, flush=True)
            for name in ("sqlite", "postgresql", "prometheus"):
                out[name]["bytes_per_domain_day"] = int(out[name]["bytes"] / days)
            out["api_vm_query"] = api_side(tmp, pg, a.api_duration)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    slowest = max(r["seconds"] for n in ("sqlite", "postgresql", "prometheus")
                  for r in out[n]["reads_24h_300_points"].values())
    q = out["api_vm_query"]
    ratio = q["postgresql"]["req_per_s"] / q["sqlite"]["req_per_s"]
    out.update(slowest_read_seconds=slowest, postgresql_over_sqlite_req_per_s=round(ratio, 2),
               target={"read_seconds": 1.0, "req_per_s_ratio": [0.5, 2.0]},
               ok=slowest <= 1.0 and 0.5 <= ratio <= 2.0)
    print(json.dumps(out))


def api_side(tmp: Path, pg: Cluster, duration: int) -> dict:
    """/vm/query throughput with state_db on SQLite and on PostgreSQL, interleaved, worst of two rounds."""
    import api as api_bench
    api_dir = tmp / "api"
    api_dir.mkdir()
    api_bench.prepare(api_dir)
    runs: dict[str, list] = {"sqlite": [], "postgresql": []}
    for r in range(2):
        for name in runs:
            url = "" if name == "sqlite" else pg.new_database("api")
            runs[name].append(api_bench.run_one(api_dir, name, ROOT, "sync", 0, duration, 50, r, state_db=url))
            print(f"api round {r + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    return {n: {"req_per_s": min(x["req_per_s"] for x in v), "p99_ms": max(x["p99_ms"] for x in v),
                "errors": sum(x["non_2xx"] for x in v)} for n, v in runs.items()}


if __name__ == "__main__":
    main()
