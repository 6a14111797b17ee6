"""History read from Prometheus (``[history] source = "prometheus"``), in the store's shape.

cms-autoscaler exports every domain's figures of each tick (cms.autoscaler.exporter:
``cms_domain_cpu_utilization_ratio``, ``_vcpu_utilization_ratio``, ``cms_domain_vcpus``,
``cms_domain_memory_bytes``, ``cms_domain_state``; labels domain, host, group) beside the
host figures (``cms_host_*``); a Prometheus scrapes them. ``PrometheusHistory`` answers the
same ``*_buckets`` calls as cms.store.Store, from ``query_range``, so cms.api.history lays
both out with one code path: the same JSON shape, the same buckets, the same means.

Buckets: the store's bucket i is ``[since + i*step, since + (i+1)*step)``; here it is the
query evaluated at ``t = since + (i+1)*step`` over ``[step]``, i.e. ``(t - step, t]``. A mean
is ``sum(sum_over_time) / sum(count_over_time)`` over the bucket's scrapes, so a series that
changed labels inside it (a migration changes ``host``) still counts as one. A sample's time
is its scrape's, at most one scrape interval after the tick that made it: a point can fall
one bucket later than the store's, never further ("within one step", the test's bound).

A group's load series (``in_flight``, ``p95_s``) come from what every ready replica's /status
poll gives the exporter: ``cms_replica_in_flight`` (the mean over its scrapes in the bucket,
as the store's mean over ticks) and ``cms_replica_latency_seconds`` (the slowest replica's
p95 over the bucket, ``histogram_quantile`` of its rate there, where the store averages each
tick's slowest p95: the same figure when the load is steady, smoother when it is not; none
in a bucket with fewer than two scrapes or no answer).

Cost, per domain and day (bench/history.py): the store keeps one row per domain per tick,
about 10 MB a day at tick_s = 1 in SQLite; Prometheus keeps ~5 series per domain in its
compressed TSDB (about 1-2 bytes a sample): an order of magnitude less, in a database built
for range reads, and none of it in the state database.

Every query is bounded by ``[history] prometheus_timeout_s``; a Prometheus that does not
answer is ``HistoryUnavailable`` (the API answers 503 with the reason).
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from typing import Any, Iterable, Mapping

from cms.errors import CmsError

log = logging.getLogger("cms.promhistory")

MIB = 1024 * 1024
CPU = "cms_domain_cpu_utilization_ratio"
VCPU = "cms_domain_vcpu_utilization_ratio"
VCPUS = "cms_domain_vcpus"
MEMORY = "cms_domain_memory_bytes"
STATE = "cms_domain_state"
IN_FLIGHT = "cms_replica_in_flight"                   # a ready replica's mean in flight over a tick
LATENCY = "cms_replica_latency_seconds"               # its guest server's cumulative /work histogram
SCRAPES = "cms_autoscaler_tick_interval_seconds"      # one sample per scrape of each autoscaler


class HistoryUnavailable(CmsError):
    """Prometheus did not answer, or answered an error."""


def _sel(**labels: str | None) -> str:
    return "{" + ",".join(f'{k}="{_quote(v)}"' for k, v in labels.items() if v is not None) + "}"


def _quote(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _mean(metric: str, sel: str, window: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return (f"sum{grouping} (sum_over_time({metric}{sel}[{window}])) / "
            f"sum{grouping} (count_over_time({metric}{sel}[{window}]))")


class PrometheusHistory:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    # -- the HTTP API ------------------------------------------------------------------------

    def _get(self, path: str, params: Mapping[str, Any]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except ValueError:
                raise HistoryUnavailable(f"Prometheus at {self.url} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise HistoryUnavailable(f"Prometheus at {self.url} does not answer: "
                                     f"{getattr(exc, 'reason', exc)}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            raise HistoryUnavailable(f"Prometheus at {self.url}: {body.get('error', body) if isinstance(body, dict) else body}")
        return body["data"]["result"]

    def query_range(self, promql: str, since: float, until: float, step: float) -> list[dict[str, Any]]:
        """Series evaluated at the end of each bucket: [{"metric": {...}, "b": {bucket: value}}]."""
        buckets = max(1, math.ceil((until - since) / step - 1e-9))
        out = []
        for series in self._get("/api/v1/query_range", {"query": promql, "start": since + step,
                                                        "end": since + buckets * step, "step": step}):
            points = {}
            for t, v in series["values"]:
                b = round((float(t) - since) / step) - 1
                if 0 <= b < buckets and v not in ("NaN", "+Inf", "-Inf"):
                    points[b] = float(v)
            out.append({"metric": series["metric"], "b": points})
        return out

    def raw(self, metric: str, span_s: float, *, by: str, **labels: str | None) -> dict[str, list[tuple[float, float]]]:
        """The samples of the last span_s seconds as scraped, per value of label `by`
        (series that differ in other labels merged, in time order)."""
        out: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for series in self._get("/api/v1/query", {"query": f"{metric}{_sel(**labels)}[{int(math.ceil(span_s))}s]"}):
            out[series["metric"].get(by, "")].extend((float(t), float(v)) for t, v in series["values"])
        return {k: sorted(v) for k, v in out.items()}

    def _one(self, promql: str, since: float, until: float, step: float) -> dict[int, float]:
        """A query that answers one series (or none): its points by bucket."""
        series = self.query_range(promql, since, until, step)
        return series[0]["b"] if series else {}

    # -- the store's downsampled reads -------------------------------------------------------

    def domain_buckets(self, domain: str, since: float, until: float, step: float) -> list[dict[str, Any]]:
        sel, w = _sel(domain=domain), _window(step)
        cols = {"cpu": self._one(_mean(CPU, sel, w), since, until, step),
                "cpu_max": self._one(f"max (max_over_time({CPU}{sel}[{w}]))", since, until, step),
                "memory_kib": self._one(f"({_mean(MEMORY, sel, w)}) / 1024", since, until, step),
                "vcpus": self._one(f"max (max_over_time({VCPUS}{sel}[{w}]))", since, until, step),
                "n": self._one(f"sum (count_over_time({VCPUS}{sel}[{w}]))", since, until, step)}
        for s in self.query_range(_mean(VCPU, sel, w, by="vcpu"), since, until, step):
            cols[f"vcpu{int(s['metric'].get('vcpu', 0))}"] = s["b"]
        return _rows(cols, "n", ints=("vcpus", "n"))

    def domain_share_buckets(self, since: float, until: float, step: float, *, host: str | None = None,
                             group: str | None = None) -> list[dict[str, Any]]:
        sel, w = _sel(host=host, group=group), _window(step)
        cpu = self.query_range(_mean(CPU, sel, w, by="domain"), since, until, step)
        vcpus = {s["metric"].get("domain", ""): s["b"]
                 for s in self.query_range(f"max by (domain) (max_over_time({VCPUS}{sel}[{w}]))", since, until, step)}
        rows = []
        for s in cpu:
            d = s["metric"].get("domain", "")
            for b, v in s["b"].items():
                n = vcpus.get(d, {}).get(b)
                rows.append({"b": b, "domain": d, "cpu": v, "cpus_used": None if n is None else v * n})
        return sorted(rows, key=lambda r: (r["b"], r["domain"]))

    def tick_buckets(self, since: float, until: float, step: float, *, host: str | None = None,
                     group: str | None = None) -> list[dict[str, Any]]:
        sel, w = _sel(host=host, group=group), _window(step)
        q = {"ticks": f"max (count_over_time({SCRAPES}[{w}]))",
             "n": f"sum (count_over_time({VCPUS}{sel}[{w}]))",
             "vcpus": f"sum (sum_over_time({VCPUS}{sel}[{w}]))",
             "cpu_sum": f"sum (sum_over_time({CPU}{sel}[{w}]))",
             "cpu_n": f"sum (count_over_time({CPU}{sel}[{w}]))",
             "used": f"sum (sum_over_time({CPU}{sel}[{w}]) * on (domain) group_left "
                     f"max by (domain) (max_over_time({VCPUS}{sel}[{w}])))"}
        if group is not None:   # the group route's load series (issue 24); a host's page has none
            q.update({"in_sum": f"sum (sum_over_time({IN_FLIGHT}{sel}[{w}]))",
                      "in_n": f"sum (count_over_time({IN_FLIGHT}{sel}[{w}]))",
                      "p95": f"max (histogram_quantile(0.95, sum by (replica, le) "
                             f"(rate({LATENCY}_bucket{sel}[{w}]))))"})
        c = defaultdict(dict, {k: self._one(v, since, until, step) for k, v in q.items()})
        rows = []
        for b, n in sorted(c["n"].items()):
            ticks = c["ticks"].get(b) or 1.0
            cpu_n, in_n = c["cpu_n"].get(b), c["in_n"].get(b)
            rows.append({"b": b, "ticks": int(ticks), "domains": n / ticks, "vcpus": c["vcpus"].get(b, 0.0) / ticks,
                         "cpus_used": None if b not in c["used"] else c["used"][b] / ticks,
                         "cpu": c["cpu_sum"][b] / cpu_n if cpu_n else None,
                         "in_flight": c["in_sum"][b] / in_n if in_n else None, "p95_s": c["p95"].get(b)})
        return rows

    def state_buckets(self, group: str, since: float, until: float, step: float) -> list[dict[str, Any]]:
        rows = []
        for s in self.query_range(f"sum by (state) (count_over_time({STATE}{_sel(group=group)}[{_window(step)}]))",
                                  since, until, step):
            rows.extend({"b": b, "state": s["metric"].get("state", ""), "n": int(v)} for b, v in s["b"].items())
        return sorted(rows, key=lambda r: (r["b"], r["state"]))

    def host_buckets(self, host: str, since: float, until: float, step: float) -> list[dict[str, Any]]:
        sel, w = _sel(host=host), _window(step)
        cols = {"cpu": self._one(_mean("cms_host_cpu_utilization_ratio", sel, w), since, until, step),
                "cpu_max": self._one(f"max (max_over_time(cms_host_cpu_utilization_ratio{sel}[{w}]))",
                                     since, until, step),
                "node_cpu": self._one(_mean("cms_host_node_cpu_utilization_ratio", sel, w), since, until, step),
                "cpus": self._one(f"max (max_over_time(cms_host_cpus{sel}[{w}]))", since, until, step),
                "vms": self._one(_mean("cms_host_vms", sel, w), since, until, step),
                "vcpus": self._one(_mean("cms_host_vcpus", sel, w), since, until, step),
                "free_memory_mib": self._one(f"({_mean('cms_host_memory_free_bytes', sel, w)}) / {MIB}",
                                             since, until, step),
                "n": self._one(f"sum (count_over_time(cms_host_up{sel}[{w}]))", since, until, step)}
        return _rows(cols, "n", ints=("cpus", "n"))


def _window(step: float) -> str:
    """A range selector of one bucket, in milliseconds (Prometheus takes no fractions of a second)."""
    return f"{max(1, int(round(step * 1000)))}ms"


def _rows(cols: Mapping[str, Mapping[int, float]], key: str, ints: Iterable[str] = ()) -> list[dict[str, Any]]:
    """One row per bucket that `key` has, with every column's value there (None where absent)."""
    ints = set(ints)
    return [{"b": b, **{k: (int(v[b]) if k in ints else v[b]) if b in v else None for k, v in cols.items()}}
            for b in sorted(cols[key])]


def recent_cpu(cfg: Any, store: Any, now: float, span_s: float, *, hosts: bool = False,
               group: str | None = None) -> dict[str, list[tuple[float, float | None]]]:
    """The last span_s seconds of CPU figures as they came, per domain (or per host with
    hosts=True): from the store's samples, or with [history] source = "prometheus" from the
    scraped series (host balancing's windows, the API's sparklines). A Prometheus that does
    not answer gives no series: balancing then sees no load and moves nothing."""
    out: dict[str, list[tuple[float, float | None]]] = {}
    if cfg.history.source != "prometheus":
        rows = store.host_samples(since=now - span_s) if hosts else store.samples(group=group, since=now - span_s)
        for r in rows:
            out.setdefault(r.host if hosts else r.domain, []).append((r.ts, r.cpu))
        return out
    prom = PrometheusHistory(cfg.history.prometheus_url, cfg.history.prometheus_timeout_s)
    try:
        if hosts:
            return prom.raw("cms_host_cpu_utilization_ratio", span_s, by="host")
        return prom.raw(CPU, span_s, by="domain", group=group)
    except HistoryUnavailable as exc:
        log.warning("no recent CPU figures: %s", exc)
        return {}


def source(cfg: Any, store: Any) -> Any:
    """Where history is read: the store, or Prometheus ([history] source)."""
    h = cfg.history
    return PrometheusHistory(h.prometheus_url, h.prometheus_timeout_s) if h.source == "prometheus" else store
