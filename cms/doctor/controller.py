"""`cms doctor`'s controller checks: this controller's role, and etcd when it elects one.

* ``controller``: cms-autoscaler's /health (on ``autoscaler.metrics_listen``): whether it
  runs, and as what: the leader (with its term) or a follower (naming the leader). Not
  running is a warning, as for the API: it need not run where doctor is asked.
* ``etcd`` (with [coordination] url): every member's /health, each bounded by
  ``coordination.timeout_s``: a member that does not answer is a warning while a majority
  answers, a fail when none does (nobody can lead then).
"""

from __future__ import annotations

import urllib.error
import urllib.parse

from cms.config import Config
from cms.controller_health import get_json, health_url, local_health
from cms.doctor.check import FAIL, OK, WARN, Check


def check_controller(cfg: Config) -> Check:
    fix = "start it: cms-autoscaler (or systemctl start cms-autoscaler)"
    url = health_url(cfg)
    if not url:
        return Check("controller", OK, "cms-autoscaler", "autoscaler.metrics_listen is empty: no /health to ask")
    try:
        h = local_health(cfg, 5)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return Check("controller", WARN, url, f"cms-autoscaler does not answer ({getattr(exc, 'reason', exc)}); "
                     "fine where it is not meant to run", fix)
    if h.get("role") == "leader":
        how = f"term {h.get('term')}" if h.get("coordination") else "the only controller (no [coordination])"
        return Check("controller", OK, url, f"{h.get('name')} leads, {how}")
    if h.get("role") == "follower":
        leader = h.get("leader")
        return Check("controller", OK, url, f"{h.get('name')} follows; "
                     + (f"the leader is {leader}" if leader else "nobody leads now (etcd without quorum, or an "
                        "election under way)"))
    return Check("controller", WARN, url, "cms-autoscaler answers but has not finished its first tick", fix)


def check_etcd(cfg: Config) -> list[Check]:
    urls = cfg.coordination.url
    if not urls:
        return []
    out, up = [], 0
    for u in urls:
        p = urllib.parse.urlsplit(u)
        health = f"{'https' if p.scheme.endswith('https') else 'http'}://{p.hostname}:{p.port or 2379}/health"
        try:
            ok = get_json(health, cfg.coordination.timeout_s).get("health") == "true"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            out.append(Check("etcd", WARN, u, f"does not answer: {getattr(exc, 'reason', exc)}",
                             "start it (systemctl start etcd), or check the network to it"))
            continue
        up += ok
        out.append(Check("etcd", OK if ok else WARN, u, "healthy" if ok else "answers, but its cluster has no leader",
                         "" if ok else "bring back a majority of the members"))
    if up * 2 <= len(urls):
        out.append(Check("etcd", FAIL, "cluster", f"{up} of {len(urls)} members healthy: no majority, so no "
                         "controller can lead and nothing scales", "bring back a majority of the etcd members"))
    return out
