"""/v1/groups says the replica state (the autoscaler's lifecycle) and the domain state
(libvirt's) under two names, warm replicas included; `cms group status` shows both."""

from __future__ import annotations

import time

from cms import cli
from cms.store import ReplicaRow
from cms.virt import OwnerMeta
from tests.unit.test_api import build


def test_groups_carry_replica_state_and_domain_state(tmp_path, run_dir, state_db):
    client, deps = build(tmp_path, state_db)
    try:
        f = deps.fleet
        f.build_on("pm1", "cms-web-1", vcpus=1, memory_mib=128, meta=OwnerMeta(group="web", created=1.0))
        f.build_on("pm1", "cms-web-2", vcpus=1, memory_mib=128, meta=OwnerMeta(group="web", created=2.0, warm=True))
        f.guest("pm1", "cms-web-2").suspend()
        f.build_on("pm1", "cms-web-3", vcpus=1, memory_mib=128, meta=OwnerMeta(group="web", created=3.0))
        now = time.time()
        deps.store.set_replicas([ReplicaRow("cms-web-1", "web", "pm1", "ready", "127.0.0.1", 20000, now),
                                 ReplicaRow("cms-web-2", "web", "pm1", "parked", "127.0.0.1", 20001, now)])
        g = client.simulate_get("/v1/groups/web").json
        got = {r["name"]: (r["replica_state"], r["domain_state"], r["warm"]) for r in g["replicas"]}
        assert got == {"cms-web-1": ("ready", "running", False), "cms-web-2": ("parked", "paused", True),
                       "cms-web-3": ("unknown", "running", False)}
        assert all("state" not in r for r in g["replicas"]), "one name per state, not a bare 'state'"
        assert g["warm_pool"] == {"size": 0, "state": "paused", "reuse_on_scale_in": True}
    finally:
        deps.fleet.close()


class FakeApi:
    def __init__(self, answer):
        self.answer = answer

    def call(self, method, path, params=None, body=None):
        assert (method, path) == ("GET", "/v1/groups/web")
        return self.answer


def test_cms_group_status_shows_both_states_and_the_pool():
    answer = {"name": "web", "min": 1, "max": 3, "policy": {"name": "threshold"}, "desired_override": None,
              "warm_pool": {"size": 1, "state": "paused", "reuse_on_scale_in": True},
              "replicas": [
                  {"name": "cms-web-1", "host": "local", "replica_state": "ready", "domain_state": "running",
                   "warm": False, "vcpus": 1, "memory_mib": 512, "cpu": [0.5, 0.42]},
                  {"name": "cms-web-2", "host": "local", "replica_state": "parked", "domain_state": "paused",
                   "warm": True, "vcpus": 1, "memory_mib": 512, "cpu": []}]}
    a = cli._parser().parse_args(["group", "status", "web"])
    _r, text = cli.run(a, FakeApi(answer))
    head, cols, one, two = text.splitlines()[:4]
    assert head == "group web: 1 replicas (min 1, max 3, policy threshold, warm pool 1 of 1 paused)"
    assert cols.split()[:5] == ["NAME", "HOST", "REPLICA_STATE", "DOMAIN_STATE", "WARM"]
    assert one.split()[:4] == ["cms-web-1", "local", "ready", "running"] and one.split()[-1] == "42%"
    assert two.split()[:5] == ["cms-web-2", "local", "parked", "paused", "warm"]
