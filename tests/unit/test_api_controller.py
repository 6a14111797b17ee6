"""GET /v1/controller (cms.api.controller): which controller leads, from the local autoscaler's /health."""

from __future__ import annotations

import dataclasses

import falcon.testing

from cms.api.app import create_app
from cms.autoscaler import exporter
from prometheus_client import CollectorRegistry
from tests.support import free_port
from tests.unit.test_api import build


def test_the_answer_follows_the_autoscalers_health_and_survives_its_absence(tmp_path, run_dir):
    status = {"ts": 1.0, "tick": {"seq": 3},
              "controller": {"role": "follower", "name": "c2", "term": 0, "leader": "c1", "coordination": True}}
    server = exporter.serve_http("127.0.0.1", 0, CollectorRegistry(), lambda: status)
    _client, deps = build(tmp_path, str(tmp_path / "state.db"))   # the route reads no table: one backend
    try:
        cfg = dataclasses.replace(deps.cfg, autoscaler=dataclasses.replace(
            deps.cfg.autoscaler, metrics_listen=f"127.0.0.1:{server.server_address[1]}"))
        client = falcon.testing.TestClient(create_app(dataclasses.replace(deps, cfg=cfg)))
        r = client.simulate_get("/v1/controller")
        assert r.status_code == 200
        assert r.json == {"role": "follower", "name": "c2", "term": 0, "leader": "c1", "coordination": True}
        status["controller"] = {"role": "leader", "name": "c2", "term": 44, "leader": "c2", "coordination": True}
        assert client.simulate_get("/v1/controller").json["term"] == 44
        dead = dataclasses.replace(cfg, autoscaler=dataclasses.replace(cfg.autoscaler,
                                                                       metrics_listen=f"127.0.0.1:{free_port()}"))
        r = falcon.testing.TestClient(create_app(dataclasses.replace(deps, cfg=dead))).simulate_get("/v1/controller")
        assert r.status_code == 200 and r.json["role"] is None and "does not answer" in r.json["error"]
    finally:
        server.shutdown()
        server.server_close()
        deps.fleet.close()
