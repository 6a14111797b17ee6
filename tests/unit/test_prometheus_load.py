"""The autoscaler's load families: each replica's requests in flight and its guest server's own
latency histogram, mapped from the status snapshot (promtool checks the text)."""

from __future__ import annotations

from cms.autoscaler import exporter
from tests.unit.test_prometheus import promtool, samples, scrape

LAT = {"bounds_s": [0.1, 0.5, 1.0], "buckets": [3, 7, 9, 10], "sum_s": 4.25}


def test_in_flight_gauge_and_latency_histogram_per_replica():
    st = {"ts": 1.0, "tick": {}, "groups": {"web": {
        "desired": 2, "min": 1, "max": 4, "serving": 2, "policy": {"name": "concurrency"},
        "replicas": [{"name": "r1", "state": "ready", "host": "h1", "cpu": 0.5, "in_flight": 2.5, "latency": LAT},
                     {"name": "r2", "state": "starting", "host": "h1", "cpu": None}],
        "warm_pool": {}}}, "hosts": {}}
    text, fams = scrape(exporter.Exporter(lambda: st, ["web"], process=False))
    who = (("group", "web"), ("host", "h1"), ("replica", "r1"))
    assert samples(fams, "cms_replica_in_flight") == {who: 2.5}          # r2 has no figure yet: no series
    buckets = {dict(k)["le"]: v for k, v in samples(fams, "cms_replica_latency_seconds", "_bucket").items()}
    assert buckets == {"0.1": 3.0, "0.5": 7.0, "1.0": 9.0, "+Inf": 10.0}
    assert samples(fams, "cms_replica_latency_seconds", "_count") == {who: 10.0}
    assert samples(fams, "cms_replica_latency_seconds", "_sum") == {who: 4.25}
    r = promtool("check", "metrics", stdin=text)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
