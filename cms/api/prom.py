"""cms-api's Prometheus metrics: requests and their latency by route template and status.

The label is the route's template as the app registered it, with Falcon's converter
arguments dropped (``/v1/vms/{vmid}``, not ``/v1/vms/17`` nor ``{vmid:int(min=0, ...)}``),
so the number of series is bounded by routes x methods x statuses whatever clients send. A
request no route matches is ``route="unmatched"``; a request refused before routing (by the
token check) is looked up in the router, so a 401 on ``/v1/vms`` still says ``/v1/vms``.

Under gunicorn every worker is a process of its own, so a counter in one worker's memory
would show only that worker's share. prometheus_client's multiprocess mode keeps each
worker's values in mmapped files under ``PROMETHEUS_MULTIPROC_DIR`` and ``GET /metrics``
(answered by any worker) adds them up. The directory must be set before prometheus_client
is first imported in the process that forks the workers, and must start empty each run:
``cms.api.serve`` calls ``fresh_multiproc_dir`` before anything imports prometheus_client,
marks each dead worker with ``worker_exited`` (gunicorn's child_exit) and removes the
directory it made on the way out. Counters of dead workers stay in the sum (a counter never
goes down). Without the variable (tests in one process) the app's own registry is served.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ENV = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# From a fast GET (ms) to a live migration (minutes; api.timeout bounds a call at 600 s).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)
_CONVERTER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^{}]*)?\}")
# prometheus_client's per-process files: <type>[_<gauge mode>]_<pid>.db
_PROCESS_FILE = re.compile(r"^(counter|histogram|summary|gauge_[a-z]+)_\d+\.db$")


# -- the gunicorn master's side -------------------------------------------------------------

def fresh_multiproc_dir() -> tuple[str, bool]:
    """Make PROMETHEUS_MULTIPROC_DIR empty and set it; returns (path, whether we made it).

    An operator's own directory (the variable already set) is kept but emptied of
    prometheus_client's files; otherwise a private temporary directory is made.
    """
    given = os.environ.get(ENV)
    if given:
        p = Path(given)
        p.mkdir(parents=True, exist_ok=True)
        for f in p.iterdir():
            if _PROCESS_FILE.match(f.name):
                f.unlink()
        return str(p), False
    path = tempfile.mkdtemp(prefix="cms-api-metrics-")
    os.environ[ENV] = path
    return path, True


def worker_exited(server: Any, worker: Any) -> None:
    """gunicorn's child_exit: a dead worker's live gauges leave the sum."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- the app's side -------------------------------------------------------------------------

def route_label(template: str | None) -> str:
    return _CONVERTER.sub(r"{\1}", template) if template else UNMATCHED


class RequestMetrics:
    """Falcon middleware counting and timing every request. Put it first in the list, so
    its process_response runs for requests other middleware refused."""

    def __init__(self, find_route: Callable[[str], Any] | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram
        self.multiprocess = bool(os.environ.get(ENV))
        # In one process the app serves its own registry; in multiprocess mode the values
        # live in files and a registry per scrape reads them (see MetricsResource).
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("cms_api_requests", "HTTP requests answered, by method, route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("cms_api_request_duration_seconds",
                                 "Time from request to response, by method, route template and status",
                                 ["method", "route", "status"], buckets=BUCKETS, registry=self.registry)
        self.find_route = find_route
        self._labels: dict[str | None, str] = {}

    def _route(self, req) -> str:
        template = req.uri_template
        if template is None and self.find_route is not None:
            found = self.find_route(req.path)
            template = found[3] if found else None
        label = self._labels.get(template)
        if label is None:
            label = self._labels[template] = route_label(template)
        return label

    def process_request(self, req, resp) -> None:
        req.context.cms_started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded: bool) -> None:
        started = getattr(req.context, "cms_started", None)
        if started is None:
            return
        took = time.perf_counter() - started
        method = req.method if req.method in METHODS else "other"
        labels = (method, self._route(req), str(resp.status_code))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(took)


class MetricsResource:
    """GET /metrics in Prometheus' text format."""

    def __init__(self, metrics: RequestMetrics) -> None:
        self.metrics = metrics

    def on_get(self, req, resp) -> None:
        from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
        if self.metrics.multiprocess:
            from prometheus_client import multiprocess
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.metrics.registry
        resp.content_type = CONTENT_TYPE_PLAIN_0_0_4  # what Prometheus 2.x asks for
        resp.data = generate_latest(registry)
