"""cms-autoscaler: the autoscaling daemon's command line.

    cms-autoscaler [--config FILE] [--once] [--dry-run] [--group NAME ...] [--log-level LEVEL]

Runs the reconcile loop (cms.autoscaler.reconcile) every ``autoscaler.tick_s`` until
SIGTERM or SIGINT, speaking systemd's notify protocol when NOTIFY_SOCKET is set.
Exit codes: 0 normal stop, 1 could not start (e.g. the ZeroMQ endpoint is taken), 2 bad
configuration.

Prometheus' /metrics is served on ``autoscaler.metrics_listen`` (cms.autoscaler.exporter),
except with --once. A metrics port that cannot be bound is logged, and the daemon runs on.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

import zmq

from cms import config, errors, sdnotify
from cms.autoscaler.reconcile import Autoscaler

log = logging.getLogger("cms.autoscaler")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cms-autoscaler", description="Autoscale cms replica groups over libvirt.")
    p.add_argument("--config", help="configuration file (default: $CMS_CONFIG, /etc/cms/cms.toml, embedded defaults)")
    p.add_argument("--once", action="store_true", help="run one tick, then exit")
    p.add_argument("--dry-run", action="store_true", help="decide and log, but never spawn, remove or publish")
    p.add_argument("--group", action="append", default=[], metavar="NAME", help="only this group (repeatable)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="default: the configuration's log_level")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, *, stop: threading.Event | None = None, **inject) -> int:
    args = parse_args(argv)
    cfg = config.load_or_exit(args.config)
    logging.basicConfig(level=(args.log_level or cfg.log_level).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        scaler = Autoscaler(cfg, dry_run=args.dry_run, groups=args.group or None, stop=stop, **inject)
    except errors.ConfigError as exc:
        print(f"cms-autoscaler: configuration error: {exc}", file=sys.stderr)
        return 2
    except zmq.ZMQError as exc:
        print(f"cms-autoscaler: cannot bind {' or '.join(cfg.zmq.publish)} / {' or '.join(cfg.zmq.snapshot)}: {exc}",
              file=sys.stderr)
        return 1
    except errors.CmsError as exc:
        print(f"cms-autoscaler: {exc}", file=sys.stderr)
        return 1
    log.info("autoscaler up: controller %s, groups %s, tick %gs, %s%s", scaler.election.me.name,
             ", ".join(scaler.groups), cfg.autoscaler.tick_s,
             f"electing a leader through etcd (lease {cfg.coordination.lease_ttl_s}s)" if cfg.coordination.enabled
             else f"the only controller, epoch {scaler.publisher.epoch}", " (dry run)" if args.dry_run else "")
    from cms.autoscaler import exporter
    metrics = exporter.attach(scaler, "" if args.once else cfg.autoscaler.metrics_listen)
    sdnotify.ready()
    wd = sdnotify.watchdog_interval()
    last_wd = [0.0]

    def on_tick() -> None:
        metrics.on_tick()
        if wd and time.monotonic() - last_wd[0] >= wd:
            sdnotify.watchdog()
            last_wd[0] = time.monotonic()

    try:
        scaler.run(once=args.once, on_tick=on_tick)
    finally:
        sdnotify.stopping()
        log.info("autoscaler stopping")
        scaler.close(timeout=0.5 if not args.once else 5.0)
        exporter.detach(scaler, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
