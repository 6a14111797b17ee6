"""Host balancing through the API: GET /v1/balance/plan and POST /v1/balance/run.

* ``GET /v1/balance/plan``: what the planner (cms.hostplan) would do now, and why, without
  doing it. The model is built the way cms-autoscaler builds it (cms.autoscaler.
  balance_model): a fresh listing of the fleet, placement's figures per host, and the
  history the daemon records (host load, VM CPU, recent moves). Answers with the plan's
  actions (each with its reason in words and its figures), the notes on what was held back
  and why, whether the daemon applies plans by itself (``[balancer] enabled``) and the limits.
* ``POST /v1/balance/run``: apply one plan. Only cms-autoscaler moves replicas (it announces
  their new addresses to the load clients), so this records the request and cms-autoscaler
  applies a fresh plan on its next tick, enabled or not; 202 with the plan as it stands now.
  The outcome shows as events (``balance_run``, ``balance_migrate``, ``migrated``,
  ``migrate_failed``, ``resized``, ``power_off_hint``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from cms.api.service import Resource, Service
from cms.autoscaler import balance_model, rebalance


def plan_json(svc: Service) -> dict[str, Any]:
    now = time.time()
    p = rebalance.current_plan(svc.cfg, svc.sched, svc.store, now)
    lim = dataclasses.asdict(balance_model.limits(svc.cfg))
    lim["anti_affinity"] = sorted(lim["anti_affinity"])
    return {"ts": now, "enabled": svc.cfg.balancer.enabled, "limits": lim, **p.to_dict()}


class Plan(Resource):
    def on_get(self, req, resp):
        resp.media = plan_json(self.svc)


class Run(Resource):
    def on_post(self, req, resp):
        plan = plan_json(self.svc)
        ts = rebalance.request_run(self.svc.store)
        eid = self.svc.store.add_event("balance_request", f"one balancing plan asked through the API "
                                       f"({len(plan['actions'])} action(s) now); cms-autoscaler applies it on "
                                       "its next tick", data={"actions": len(plan["actions"])})
        resp.media = {"pending": True, "requested_at": ts, "event_id": eid, "plan": plan}
        resp.status = "202 Accepted"
