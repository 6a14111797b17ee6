"""Two controllers, one leader (issue 22), on the lab: 3 hypervisors, 2 controllers each in its own
network namespace running the real cms-autoscaler, a 3-member etcd cluster only they reach,
one state database they share on PostgreSQL, as in production (cms.lab.postgres, listening
on the hosts' bridge the controllers reach from their namespaces), and the real load client
following both controllers' feeds; on each controller, beside its autoscaler, the real cms-api
(gunicorn) over that same store, reached on the controller's address as clients would.

One lab, etcd and pair of controllers for the module (cms.lab.cluster), the tests in order:

* kill: the leader is SIGKILLed under load; the follower's API answers meanwhile (the
  group, the controller), the follower leads within TTL + 2 ticks (and a margin for asking
  /health) and its API says so, the client resyncs to its new epoch with no failed request
  in the takeover, a load step afterwards still scales out, and every replica name was
  spawned once (events and libvirt agree);
* partition: the leader is cut off from etcd, not from the hosts: it stops acting within
  TTL/2 (a tick and a margin), the other takes over; healed, the old one follows; no
  replica is spawned or removed by the change;
* etcd: one member dies (the one both controllers ask first, not etcd's raft leader: with the
  default 5 s lease a raft leader's death is a close thing, test_election_real covers it with
  8 s) and leadership holds; quorum lost: nobody acts and the replicas
  keep serving; quorum back: one leads;
* a scale request made with the `cms` CLI through the follower's API is read through the
  leader's API (its event), taken once by the leader, and both APIs then show the same
  replicas in the same lifecycle states (rows of the one store);
* restart: both controllers restart: one leads, and the group is whole with no duplicate.

Boots: the group's first replica and one scale-out (~40 s of the ~4 min); the two cms-api
add a few seconds at the start (started together, 2 workers each).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from cms.lab import postgres
from cms.lab.cluster import Cluster
from cms.lab.controllers import Controllers
from cms.lab.hosts import running
from cms.lab.realstack import wait_until
from cms.lab.stack import failed

pytestmark = [pytest.mark.real, pytest.mark.timeout(1200)]

G = "ha"
TTL, TICK = 5, 1.0    # the default lease: it rides out etcd electing a new raft leader (test_election_real)
SLACK = 1.5          # asking /health every 0.1 s, a process's scheduling on 2 busy cores


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("takeover")
    with running(3, name="cmsha", subnet=95) as (lab, hosts), \
            postgres.Cluster.started(listen=lab.gateway) as pg:
        ctl = Controllers(lab)
        controllers, etcd = ctl.up(2)
        c = Cluster(lab, hosts, ctl, controllers, etcd, work, group=G, ttl=TTL, tick_s=TICK,
                    state_db=pg.new_database(),
                    group_cfg={"min": 1, "max": 2, "vcpus": 1, "memory_mib": 512, "cooldown_s": 5, "warmup_s": 3,
                               "threshold": {"high": 0.6, "low": 0.05, "window_s": 4, "window_in_s": 3600}})
        try:
            c.start(1)
            c.wait_leader(60, among=(1,), feed_open=True)
            c.start(2)
            wait_until(lambda: (c.health(2) or {}).get("leader") == "c1", 60, 0.2, "c2 to follow c1")
            c.start_api(1, 2)
            yield c
        finally:
            c.close()
            etcd.stop()


def spawned(c: Cluster) -> list[str]:
    """Names of every spawn (an "added" event with its spawn stages), one entry per spawn."""
    store = c.store()
    return [e.subject for e in store.events(kinds=["added"], limit=10000) if "define_s" in (e.data or {})]


def events_since(c: Cluster, kind: str, since: float) -> list:
    return [e for e in c.store().events(kinds=[kind], limit=10000) if e.ts >= since]


def serving(c: Cluster) -> int:
    """Replicas of the group that answer /health now (asked directly, not through a controller)."""
    fleet = c.fleet()
    try:
        n = 0
        for d in fleet.owned(G):
            try:
                with urllib.request.urlopen(f"http://{fleet.forward_address(d.host)}:{d.meta.port}/health",
                                            timeout=3) as r:
                    n += r.status == 200
            except OSError:
                pass
        return n
    finally:
        fleet.close()


def test_kill_the_leader_under_load(cluster):
    c = cluster
    load = c.loadgen("kill", "--low-rate", "1", "--high-rate", "40", "--timeout", "60", "--duration", "600")
    wait_until(lambda: any(json.loads(x).get("type") == "tick" and json.loads(x).get("completed")
                           for x in (c.dir / "kill.jsonl").read_text().splitlines() if x)
               if (c.dir / "kill.jsonl").exists() else False, 180, 0.5, "the client's first answered request")
    wall_kill = time.time()
    killed_at = c.kill(1)
    # the follower's API answers while nobody leads: the group (from libvirt and the store), itself
    group = c.api(2).call("GET", f"/v1/groups/{G}")
    assert {r["name"] for r in group["replicas"]} == set(c.domains()) and group["replicas"]
    assert c.api(2).call("GET", "/v1/controller")["name"] == "c2"
    # the follower leads, first tick done, within the target (its /health is rebuilt at the end of a tick)
    leader = c.wait_leader(TTL + 2 * TICK + SLACK, among=(2,))
    assert leader == 2 and time.monotonic() - killed_at <= TTL + 2 * TICK + SLACK
    assert c.api(2).call("GET", "/v1/controller") | {"term": None} == {
        "role": "leader", "name": "c2", "term": None, "leader": "c2", "coordination": True}
    gone = c.api(1).call("GET", "/v1/controller")      # c1's API outlives its autoscaler, and says so
    assert gone["role"] is None and "does not answer" in gone["error"]
    c.wait_leader(30, among=(2,), feed_open=True)
    # the client resyncs to the new epoch; a load step then still scales out
    wait_until(lambda: any('"resync"' in x or '"new-epoch"' in x for x in (c.dir / "kill.jsonl").read_text()
                           .splitlines()[-400:]), 30, 0.5, "the client's resync to the new leader")
    takeover_end = time.time()
    load.send_signal(signal.SIGUSR1)                 # high load
    wait_until(lambda: [e for e in events_since(c, "decision", takeover_end) if "scale_out" in e.message],
               120, 1, "a scale-out decision by the new leader")
    wait_until(lambda: len(events_since(c, "ready", takeover_end)) >= 1, 240, 1, "the new replica ready")
    load.send_signal(signal.SIGUSR2)                 # low again
    summary, records = c.loadgen_result("kill", load)
    assert failed(records, wall_kill - 2, takeover_end + 2) == 0, "a request failed in the takeover"
    assert summary["completed"] > 0
    names = spawned(c)
    assert len(names) == len(set(names)), f"a name was spawned twice: {names}"
    assert set(c.domains()) == set(names), "libvirt and the spawn events disagree"
    c.start(1)                                      # back, as a follower, and its API says so
    wait_until(lambda: c.api(1).call("GET", "/v1/controller")["leader"] == "c2", 60, 0.2, "c1 to follow c2")


def test_partition_the_leader_from_etcd(cluster):
    c = cluster
    old = c.wait_leader(30, feed_open=True)
    other = 3 - old
    before = c.domains()
    spawns = len(spawned(c))
    c.ctl.cut(old)
    try:
        wait_until(lambda: (c.health(old) or {}).get("role") == "follower", TTL / 2 + TICK + SLACK, 0.1,
                   "the cut-off leader to stop acting")
        c.wait_leader(TTL + 2 * TICK + SLACK + 2, among=(other,))
    finally:
        c.ctl.heal(old)
    wait_until(lambda: (c.health(old) or {}).get("leader") == f"c{other}", 30, 0.2, "the old leader to follow")
    c.wait_leader(30, among=(other,), feed_open=True)
    assert c.domains() == before and len(spawned(c)) == spawns    # nothing made, nothing removed


def test_a_scale_request_through_the_follower_api_is_taken_once_by_the_leader(cluster):
    """`cms group scale` against the follower's cms-api; the leader's cms-api reads what it wrote."""
    c = cluster
    leader = c.wait_leader(30, feed_open=True)
    follower = 3 - leader
    have = len(c.domains())
    want = 1 if have > 1 else 2
    since = time.time()
    cli = subprocess.run([sys.executable, "-m", "cms.cli", "--config", str(c.configs[follower]), "--json",
                          "group", "scale", G, str(want)], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    asked = json.loads(cli.stdout)
    seen = c.api(leader).call("GET", "/v1/events", {"kind": "scale_request", "since_id": asked["event_id"] - 1})
    assert [(e["id"], e["data"]) for e in seen["events"]] == [(asked["event_id"], {"replicas": want})]
    wait_until(lambda: len(c.domains()) == want, 240, 1, f"the group at {want} replicas")
    assert len(events_since(c, "scale_override", since)) == 1

    def both_apis() -> dict | None:       # the replicas and their lifecycle state (the store's rows), each API's view
        views = [{r["name"]: r["replica_state"] for r in c.api(i).call("GET", f"/v1/groups/{G}")["replicas"]}
                 for i in (1, 2)]
        return views[0] if views[0] == views[1] and set(views[0].values()) == {"ready"} else None
    assert set(wait_until(both_apis, 60, 0.5, "both APIs to show the group ready")) == set(c.domains())


def test_etcd_member_loss_and_quorum_loss(cluster):
    c = cluster
    leader = c.wait_leader(30, feed_open=True)
    term = c.health(leader)["term"]
    # The member both controllers ask first dies; etcd's raft leader is another, so this is the
    # controllers' failover alone. A raft leader's death adds etcd's own election (1-2 s with
    # no write answered), which the renewal's retry rides out only when half the lease covers
    # a tick and that election: with this 5 s lease it held in 2 of 3 runs (a full suite run
    # stepped down), so it is test_election_real's, with 8 s.
    c.etcd.make_raft_leader(1)
    c.etcd.kill(0)
    try:
        end = time.monotonic() + 2 * TTL
        while time.monotonic() < end:               # it holds: same leader, same term, throughout
            h = c.health(leader)
            assert h and h["role"] == "leader" and h["term"] == term, (h, c.log_tail(leader))
            time.sleep(0.2)
        c.etcd.kill(1)                              # 1 of 3: no quorum
        wait_until(lambda: all((c.health(i) or {}).get("role") == "follower" for i in (1, 2)),
                   TTL / 2 + 3 * TICK + 2 * c.ttl, 0.2, "nobody acting without quorum")
        spawns = len(spawned(c))
        doms = c.domains()
        # the replicas keep serving: every one answers /health (3 s each), asked again for a
        # few seconds (a TCG guest on 2 shared cores can miss one 3 s answer; it once did)
        end, n = time.monotonic() + 15, 0
        while time.monotonic() < end and (n := serving(c)) != len(doms):
            time.sleep(1)
        assert n == len(doms) >= 1, (
            doms, [(e.kind, e.subject, e.message) for e in c.store().events(limit=12, newest_first=True)],
            c.log_tail(leader, 40))
        end = time.monotonic() + TTL
        while time.monotonic() < end:
            assert all((c.health(i) or {}).get("role") == "follower" for i in (1, 2))
            time.sleep(0.3)
        assert len(spawned(c)) == spawns
    finally:
        c.etcd.revive(0)
        c.etcd.revive(1)
    c.wait_leader(TTL + 30, feed_open=True)


def test_both_controllers_restart_and_the_group_is_whole(cluster):
    c = cluster
    leader = c.wait_leader(30, feed_open=True)
    before = c.domains()
    spawns = len(spawned(c))
    for i in (1, 2):
        c.stop(i)
    for i in (1, 2):
        c.start(i)
    c.wait_leader(60, feed_open=True)
    for _ in range(int(5 / TICK)):                  # a few of the new leader's ticks
        time.sleep(TICK)
    assert c.domains() == before and len(spawned(c)) == spawns, "a replica was made again or lost"
    assert leader in (1, 2)
