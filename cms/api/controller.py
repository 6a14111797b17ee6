"""GET /v1/controller: which controller leads, as this machine's cms-autoscaler knows it.

cms-api runs on every controller; the console shows the answer at the top of every page.
It asks the local cms-autoscaler's /health (``autoscaler.metrics_listen``, at most 2 s), so
a call costs no etcd or libvirt request: ``role`` (leader or follower), ``name``, ``term``,
``leader`` (the leading controller's name; null while nobody leads) and ``coordination``
(false: one controller, always the leader). When the autoscaler does not answer, ``role``
is null and ``error`` says why: the API itself goes on serving.
"""

from __future__ import annotations

from cms import controller_health
from cms.config import Config

KEYS = ("role", "name", "term", "leader", "coordination")


class ControllerResource:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def on_get(self, req, resp):
        try:
            h = controller_health.local_health(self.cfg)
            resp.media = {k: h.get(k) for k in KEYS}
        except (OSError, ValueError) as exc:
            resp.media = {**{k: None for k in KEYS}, "coordination": self.cfg.coordination.enabled,
                          "error": f"cms-autoscaler does not answer at {controller_health.health_url(self.cfg) or '-'}: "
                                   f"{getattr(exc, 'reason', exc)}"}
