"""`cms-api`: serve cms.api.app:get_app() with gunicorn.

    cms-api [--config FILE] [--bind HOST:PORT] [--workers N] [--check]

The configuration (--config, else $CMS_CONFIG, else /etc/cms/cms.toml) gives api.bind and
api.workers (0: 2 x CPUs + 1). gunicorn runs programmatically (a BaseApplication), so there
is no separate gunicorn.conf.py to keep in step; the app is not preloaded, so each worker
opens its own libvirt and state database connections after the fork. --check validates the
configuration and exits.

Worker class (api.worker_class), decided on bench/api.py's figures (50 connections, 2 cores,
three interleaved runs each):

- sync (the default): one call at a time per worker process, the connection closed after each
  answer. Every request goes back through the kernel's accept queue, so load spreads over all
  workers and nothing waits behind a thread hand-off: about 6,500 req/s, p99 10-14 ms.
- gthread: keep-alive connections stay with the worker that accepted them, so throughput
  depends on how 50 connections happened to land (2,200-10,000 req/s from run to run), and
  each request passes between the poller thread and a pool thread under the GIL: p99 23-39 ms.

The price of sync is that a slow call holds a whole worker: a live migration or a create that
waits on a busy libvirtd serves nobody else meanwhile, and a sync worker that runs past
api.timeout (600 s) is restarted by gunicorn, so that bounds every call. Operators who expect
many slow calls at once can choose gthread and api.threads.

GET /metrics adds up every worker's figures (prometheus_client's multiprocess mode): the
master makes PROMETHEUS_MULTIPROC_DIR fresh before it forks, gunicorn's child_exit marks
each dead worker, and a directory the master made is removed when it exits (cms.api.prom).
"""

from __future__ import annotations

import argparse
import os
import sys

from cms import config as cms_config


def default_workers(cfg: cms_config.Config) -> int:
    return cfg.api.workers or (2 * (os.cpu_count() or 1) + 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cms-api", description="Serve the cms REST API with gunicorn.")
    ap.add_argument("--config", help="cms.toml (default: $CMS_CONFIG or /etc/cms/cms.toml)")
    ap.add_argument("--bind", help="HOST:PORT (default: api.bind)")
    ap.add_argument("--workers", type=int, help="gunicorn workers (default: api.workers, 0 = 2 x CPUs + 1)")
    ap.add_argument("--check", action="store_true", help="validate the configuration and exit")
    a = ap.parse_args(argv)
    cfg = cms_config.load_or_exit(a.config)
    if a.config:
        os.environ[cms_config.ENV_VAR] = os.path.abspath(a.config)
    elif cfg.source != "<embedded defaults>":
        os.environ[cms_config.ENV_VAR] = cfg.source
    if a.check:
        print(f"cms-api: {cfg.source} is valid")
        return 0
    bind = a.bind or cfg.api.bind
    workers = a.workers if a.workers is not None else default_workers(cfg)
    if workers < 1:
        print("cms-api: --workers must be at least 1", file=sys.stderr)
        return 2

    # The schema (and SQLite's switch to WAL) is made once here, before the workers fork, so
    # they never race to create it. A state_db that cannot be opened, or that is at another
    # schema revision (cms.db: `cms db upgrade`), is one line, not a dead master.
    from cms import errors
    from cms.store import Store
    try:
        Store.of(cfg).close()
    except errors.CmsError as e:
        print(f"cms-api: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"cms-api: cannot open state_db {cfg.state_db}: {e}", file=sys.stderr)
        return 2

    # Each worker keeps its Prometheus figures in files here and /metrics adds them up; the
    # directory must exist, empty, before a worker imports prometheus_client (cms.api.prom).
    from cms.api import prom
    metrics_dir, made_metrics_dir = prom.fresh_multiproc_dir()

    from gunicorn.app.base import BaseApplication

    from cms.api.workers import WORKER_CLASSES

    class App(BaseApplication):
        def load_config(self) -> None:
            # gunicorn's sync or gthread worker, with its own error pages made JSON (cms.api.workers);
            # limit_request_line stays gunicorn's 4094 bytes: the reason is in that module
            settings = {"bind": bind, "workers": workers, "worker_class": WORKER_CLASSES[cfg.api.worker_class],
                        # gunicorn quietly turns sync into gthread when threads > 1
                        "threads": cfg.api.threads if cfg.api.worker_class == "gthread" else 1,
                        "timeout": cfg.api.timeout,
                        "graceful_timeout": 10, "keepalive": 5, "backlog": 2048,
                        "accesslog": None, "errorlog": "-", "loglevel": cfg.log_level,
                        "proc_name": "cms-api", "preload_app": False,
                        "child_exit": prom.worker_exited}
            for k, v in settings.items():
                self.cfg.set(k, v)

        def load(self):
            from cms.api.app import get_app
            return get_app()

    try:
        App().run()
    finally:
        if made_metrics_dir:
            prom.remove_dir(metrics_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
